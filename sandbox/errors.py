"""The error the sandbox raises when it cannot run trials here: not a trial's fault, and the message says what to do."""


class SandboxError(Exception):
    """The sandbox cannot run (no bwrap, no namespaces, no Docker engine, a changed harness, ...)."""
