"""As vllm/v1/engine/exceptions.py."""


class EngineGenerateError(Exception):
    pass


class EngineDeadError(Exception):
    pass
