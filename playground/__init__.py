"""A web playground for KServe text-to-image endpoints: compare them side by side, and see how a router spreads requests.

``python -m playground --endpoint NAME=URL ...``; see docs/playground.md.
"""
