"""What the pages share, one job per module; this package is never registered as a page.

- ``paths``: where the app reads and writes on disk.
- ``state``: the session's own state (model choice, uploaded weights, solution, measurements, jobs).
- ``caches``: ``st.cache_resource`` wrappers around core, through the model's family.
- ``tables_in_use``: the tables a model uses, the budget, the DP's answers on them.
- ``frame``: the navigation, the sidebar, the first-visit hint, and the polite stop of a page.
- ``jobs``, ``job_view``: background jobs and their live view; ``jobs_tables``,
  ``jobs_finetune``, ``jobs_measure``: one function per pipeline a page starts; ``job_list``:
  the session's finetune jobs, each belonging to one model; ``finetune_plan``: the recommended
  steps and the timed duration of a finetune.
- ``figures``, ``chain_figure``, ``learn_figures``, ``curves``, ``grids``: plotly figures
  (frontiers and tables, the chain, the Learn page, finetune curves) and sample grids.
- ``views``, ``downloads``: layout pieces and files every family shares.
- ``numbers``, ``messages``: how every number is written, and what a refusal says.
- ``panels``: what differs per model family, named by the family (``family.task.panel``).

This file imports nothing, so any module may import a sibling without a cycle through it.
"""
