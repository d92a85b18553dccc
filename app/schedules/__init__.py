"""Schedules: batch jobs on a cron, on demand, or when a new file arrives.

- ``specs``: the shape of a schedule as callers write it (source, sink, cron, time zone).
- ``service``: create, change, delete and run now, with every check that needs the world.
- ``cron``: cron expressions read in a time zone.
- ``sources`` / ``sinks``: where a run's rows come from (files, SQL with a watermark) and where
  its results go besides the results store (a table, a JSONL file).
- ``access``: what a tenant may touch: the connections and folders an operator registered for
  it, never inferq's own database; ``identity`` tells inferq's own database under any spelling.
- ``watcher``: the event trigger, a scan of watched folders that takes in each new file once.
- ``runner``: the tick beat sends every few seconds: fires due schedules, carries out runs
  (each a bulk job with its provenance), writes sinks of jobs that ended.
- ``config``: the knobs, from ``INFERQ_*`` environment variables.
"""
