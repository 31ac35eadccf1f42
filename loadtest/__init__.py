"""Load test and breaking-point finder for deployment units (``python -m loadtest``).

The package never imports kserve or tritonclient, so it runs in any environment with aiohttp,
grpcio, protobuf, pyyaml and matplotlib. See docs/loadtest.md.
"""
