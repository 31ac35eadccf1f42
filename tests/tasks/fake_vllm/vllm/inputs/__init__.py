"""As vllm/inputs/data.py: TokensPrompt is a TypedDict."""

from typing import TypedDict


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
