"""POP health: active /healthz probes and the rise/fall hysteresis that turns them into up or down."""
