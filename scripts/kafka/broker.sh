#!/usr/bin/env bash
# Run a single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback.
#
#   scripts/kafka/broker.sh up   [PORT] [DATA_DIR]   start in the background, wait until ready
#   scripts/kafka/broker.sh down [DATA_DIR]          stop the broker started there (by its PID)
#   scripts/kafka/broker.sh fetch                    only resolve the broker's jars
#
# The official broker artifacts (org.apache.kafka:kafka_2.13 and its dependencies) come
# from Maven Central through Maven, into .cache/kafka/<version>/libs (ignored by git).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka/$VERSION/libs}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

fetch() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  echo "kafka: resolving Apache Kafka $VERSION from Maven Central into $LIBS" >&2
  mkdir -p "$LIBS"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

up() {
  local port="${1:-${KAFKA_PORT:-9092}}" data="${2:-$ROOT/.kafka}"
  fetch
  mkdir -p "$data"
  data="$(cd "$data" && pwd)"
  if [ -f "$data/broker.pid" ] && kill -0 "$(cat "$data/broker.pid")" 2>/dev/null; then
    echo "kafka: already running (pid $(cat "$data/broker.pid")) on $(cat "$data/port")"; return 0
  fi
  local cport
  if [ -f "$data/controller-port" ]; then cport="$(cat "$data/controller-port")"; else cport="$(free_port)"; fi
  echo "$cport" > "$data/controller-port"
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
  if [ ! -f "$data/logs/meta.properties" ]; then
    "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" kafka.tools.StorageTool \
      format -t "$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$data/server.properties" >"$data/format.log" 2>&1 || { cat "$data/format.log" >&2; exit 1; }
  fi
  echo "$port" > "$data/port"
  nohup "$JAVA" -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$data/server.properties" >"$data/broker.log" 2>&1 < /dev/null &
  echo $! > "$data/broker.pid"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$data/broker.log" 2>/dev/null; then
      echo "kafka: ready on 127.0.0.1:$port (pid $(cat "$data/broker.pid"), data $data)"; return 0
    fi
    if ! kill -0 "$(cat "$data/broker.pid")" 2>/dev/null; then
      echo "kafka: broker exited during start; last lines of $data/broker.log:" >&2
      tail -20 "$data/broker.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "kafka: not ready after 60 s; see $data/broker.log" >&2; exit 1
}

down() {
  local data="${1:-$ROOT/.kafka}"
  [ -f "$data/broker.pid" ] || { echo "kafka: not running (no $data/broker.pid)"; return 0; }
  local pid; pid="$(cat "$data/broker.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$data/broker.pid"
  echo "kafka: stopped"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  fetch) fetch ;;
  *) echo "usage: $0 up [PORT] [DATA_DIR] | down [DATA_DIR] | fetch" >&2; exit 2 ;;
esac
