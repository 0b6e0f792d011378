"""Provider adapters: the ``Sender`` protocol and one module per provider.

Nothing here imports from the gateway's pipeline; the pipeline hands adapters ready-rendered
messages and gets back a :class:`~adapters.base.SendResult` or a
:class:`~adapters.errors.SendError`.
"""
