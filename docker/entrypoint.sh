#!/bin/sh
# Loopback forwarders, then the container's command.
#
# Tally takes one TALLY_HOST for every service it talks to (tally.config: kafka_bootstrap,
# cassandra_hosts, redis_url) and for the address its servers listen on.  In compose each
# service has its own name, so Tally containers run with TALLY_HOST=0.0.0.0 and this script
# forwards 127.0.0.1:<port> to the real service (TALLY_FORWARD="9092=kafka-1:9092 ...").
# Kafka and Cassandra clients only bootstrap through the forwarder: the brokers' advertised
# listeners and Cassandra's peers table then give them every node's own address.
# Remove once tally.config has per-service endpoints (docker/README.md, "Gaps").
set -e
for spec in ${TALLY_FORWARD:-}; do
    port="${spec%%=*}"
    target="${spec#*=}"
    socat "TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr" "TCP:${target}" &
done
exec "$@"
