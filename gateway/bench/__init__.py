"""`tollbooth bench`: the gateway measured against its upstream, each part its own process.

`scenarios` (options, request shapes) -> `runner` (processes, phases, collection; `procs` for
process CPU, `profile` for py-spy) -> `results` (numbers) -> `report` (table, JSON).
`loadgen` is the load generator and `upstream` the raw replaying upstream, each run as
`python -m`.
"""
