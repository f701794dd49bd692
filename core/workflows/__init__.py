"""The workflows: whole jobs written once against the model-family protocol.

Each is a core function returning a frozen dataclass, with a progress callback and a cancel event
where it runs long; the CLI verbs and the app's background jobs both call them, so neither holds
a pipeline of its own (DESIGN.md, "Model families"). One module per workflow: ``tables``
(latency and importance tables), ``compress`` (a solution merged into a checkpoint), ``finetune``
(the finetune job), ``measure`` (original vs compressed, timed side by side), ``evaluate`` (the
family's task), and ``model`` (a model loaded with its family and traced form, which they all
take).
"""
