"""The bundled services: order, risk, market-data, execution, position, and analytics (their read side).

One package, one image, one process per service: `tradeplane-svc <component> [--config PATH]`.
Environment (the operator renders these into each pod):

    TRADEPLANE_CONFIG            settings file, YAML, the component's `spec.config`
                                 (default /etc/tradeplane/config.yaml; a missing file means defaults)
    TRADEPLANE_REVISION          pod-template revision, the `revision` label of every metric (default dev)
    TRADEPLANE_BIND              address to listen on and connect from (default 0.0.0.0)
    TRADEPLANE_PORT              wire port (order 7001, risk 7002, market-data 7003, execution 7004,
                                 position 7005)
    TRADEPLANE_METRICS_PORT      HTTP: /metrics, /healthz, /readyz, /status (default 9100)
    TRADEPLANE_RISK_ADDR         host:port of risk (order needs it), or shm:/dir when co-located: the
                                 shared-memory rings risk serves in /dir (any peer but market-data)
    TRADEPLANE_RING_DIR          directory where this service also serves one co-located caller over
                                 shared-memory rings (TCP stays open for everyone else)
    TRADEPLANE_EXECUTION_ADDR    host:port of execution (order needs it)
    TRADEPLANE_EVENT_LOG         nats:// URLs of the event log's servers, comma-separated (execution
                                 appends fills, position projects them; unset: fills are kept nowhere)
    TRADEPLANE_EVENT_LOG_REPLICAS replicas of the stream when a service creates it (default 1; 3 on a
                                 clustered JetStream)
    TRADEPLANE_MARKET_DATA_ADDR  host:port of market-data's TCP port (risk and position subscribe)
    TRADEPLANE_MARKET_DATA_GROUP multicast group:port of the feed (unset: unicast only)
    TRADEPLANE_INJECT_LATENCY_US added latency per request, overrides latencyInjectionMicros

services/README.md describes the settings, the protocol and the metrics.
"""
