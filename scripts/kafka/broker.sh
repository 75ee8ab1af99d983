#!/usr/bin/env bash
# Apache Kafka on loopback (KRaft), for development and the test suite.
#
#   broker.sh up   [PORT] [DATA_DIR]          one node (broker+controller), PLAINTEXT
#   broker.sh secure-up [PORT] [DATA_DIR]     one node with a SASL_SSL listener (TLS + SCRAM-SHA-512):
#                                             a throw-away CA and broker certificate (openssl), and
#                                             SCRAM users made with Kafka's own storage tool.
#                                             Client settings are written to DATA_DIR/client.env.
#   broker.sh cluster-up [DATA_DIR] [N]       one controller and N brokers (default 3); topics get
#                                             replication factor N and min.insync.replicas N-1.
#                                             The bootstrap list is written to DATA_DIR/bootstrap.
#   broker.sh start DATA_DIR/NODE             start one node again after it stopped or was killed
#   broker.sh down [DATA_DIR]                 stop what was started there (by PID), every node
#   broker.sh fetch                           only resolve the broker's jars
#
# The official broker artifacts (org.apache.kafka:kafka_2.13 and its dependencies) come
# from Maven Central through Maven, into .cache/kafka/<version>/libs (ignored by git).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka/$VERSION/libs}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
SCRAM_MECHANISM=SCRAM-SHA-512

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

kafka_tool() {  # run one of Kafka's own tools (a main class) with the broker's jars
  "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" "$@"
}

running() { [ -f "$1/broker.pid" ] && kill -0 "$(cat "$1/broker.pid")" 2>/dev/null; }

secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }

# the settings every node shares; replication $1, min ISR $2
common_props() {
  cat <<PROPS
num.partitions=4
auto.create.topics.enable=true
default.replication.factor=$1
min.insync.replicas=$2
offsets.topic.replication.factor=$1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$1
transaction.state.log.min.isr=$2
share.coordinator.state.topic.replication.factor=$1
share.coordinator.state.topic.min.isr=$2
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
PROPS
}

# format NODE_DIR CLUSTER_ID [extra StorageTool args...]; once per node, never over data
format_node() {
  local node="$1" cluster="$2"; shift 2
  [ -f "$node/logs/meta.properties" ] && return 0
  kafka_tool kafka.tools.StorageTool format -t "$cluster" -c "$node/server.properties" "$@" \
    >"$node/format.log" 2>&1 || { cat "$node/format.log" >&2; exit 1; }
}

cluster_id() { kafka_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1; }

# start NODE_DIR: launch the JVM on its server.properties and wait until it serves
start() {
  local node="$1" heap="${2:-768m}"
  [ -f "$node/server.properties" ] || { echo "kafka: $node has no server.properties" >&2; exit 1; }
  if running "$node"; then echo "kafka: already running (pid $(cat "$node/broker.pid"))"; return 0; fi
  : >"$node/broker.log"
  nohup "$JAVA" -Xms128m "-Xmx$heap" -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$node/server.properties" >"$node/broker.log" 2>&1 < /dev/null &
  echo $! > "$node/broker.pid"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started\|Kafka controller started\|ControllerServer.*started\|Transition from STARTING to STARTED" "$node/broker.log" 2>/dev/null; then
      echo "kafka: $(basename "$node") ready (pid $(cat "$node/broker.pid"), data $node)"; return 0
    fi
    if ! running "$node"; then
      echo "kafka: node exited during start; last lines of $node/broker.log:" >&2
      tail -20 "$node/broker.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "kafka: not ready after 120 s; see $node/broker.log" >&2; exit 1
}

# single_node PORT DATA_DIR: sets DATA (absolute) and CPORT (kept across restarts); returns 1
# when a broker already runs there
single_node() {
  DATA="$2"; mkdir -p "$DATA"; DATA="$(cd "$DATA" && pwd)"
  if running "$DATA"; then echo "kafka: already running (pid $(cat "$DATA/broker.pid")) on $(cat "$DATA/port")"; return 1; fi
  if [ -f "$DATA/controller-port" ]; then CPORT="$(cat "$DATA/controller-port")"; else CPORT="$(free_port)"; fi
  echo "$CPORT" > "$DATA/controller-port"
}

# single_node_props PORT LISTENER: a combined broker+controller whose one client listener is LISTENER
single_node_props() {
  cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=$2://127.0.0.1:$1,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=$2://127.0.0.1:$1
controller.listener.names=CONTROLLER
listener.security.protocol.map=$2:$2,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$2
log.dirs=$DATA/logs
PROPS
  common_props 1 1
}

up() {
  local port="${1:-${KAFKA_PORT:-9092}}"
  fetch
  single_node "$port" "${2:-$ROOT/.kafka}" || return 0
  single_node_props "$port" PLAINTEXT > "$DATA/server.properties"
  format_node "$DATA" "$(cluster_id)"
  echo "$port" > "$DATA/port"
  start "$DATA"
}

# A throw-away CA and a broker certificate for 127.0.0.1 / localhost, in PEM (Kafka reads PEM
# key and trust stores). The CA's key never leaves DATA_DIR/pki.
make_pki() {
  local pki="$1"
  [ -f "$pki/broker.pem" ] && return 0
  mkdir -p "$pki"; chmod 700 "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=triage test CA" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$pki/broker.key" -out "$pki/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$pki/ext.cnf"
  openssl x509 -req -in "$pki/broker.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/ext.cnf" -out "$pki/broker.crt" 2>/dev/null
  # Kafka's PEM key store: an unencrypted PKCS#8 key, then the certificate chain
  { openssl pkcs8 -topk8 -nocrypt -in "$pki/broker.key"; cat "$pki/broker.crt" "$pki/ca.crt"; } > "$pki/broker.pem"
  chmod 600 "$pki"/*.key "$pki/broker.pem"
}

secure_up() {
  local port="${1:-${KAFKA_PORT:-9093}}" admin_pw user_pw
  command -v openssl >/dev/null || { echo "kafka: secure-up needs openssl" >&2; exit 1; }
  fetch
  single_node "$port" "${2:-$ROOT/.kafka-secure}" || return 0
  local data="$DATA"
  make_pki "$data/pki"
  if [ -f "$data/secrets" ]; then . "$data/secrets"; else
    admin_pw="$(secret)"; user_pw="$(secret)"
    printf 'admin_pw=%s\nuser_pw=%s\n' "$admin_pw" "$user_pw" > "$data/secrets"; chmod 600 "$data/secrets"
  fi
  { single_node_props "$port" SASL_SSL; cat <<PROPS
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
ssl.keystore.type=PEM
ssl.keystore.location=$data/pki/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$data/pki/ca.crt
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
PROPS
  } > "$data/server.properties"
  chmod 600 "$data/server.properties"
  format_node "$data" "$(cluster_id)" \
    --add-scram "$SCRAM_MECHANISM=[name=admin,password=$admin_pw]" \
    --add-scram "$SCRAM_MECHANISM=[name=triage,password=$user_pw]"
  echo "$port" > "$data/port"
  # what a client needs, as the TRIAGE_KAFKA_* variables triage reads
  cat > "$data/client.env" <<ENV
TRIAGE_KAFKA_BOOTSTRAP=127.0.0.1:$port
TRIAGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL
TRIAGE_KAFKA_SASL_MECHANISM=$SCRAM_MECHANISM
TRIAGE_KAFKA_SASL_USERNAME=triage
TRIAGE_KAFKA_SASL_PASSWORD=$user_pw
TRIAGE_KAFKA_SSL_CAFILE=$data/pki/ca.crt
ENV
  chmod 600 "$data/client.env"
  start "$data"
  echo "kafka: client settings in $data/client.env"
}

cluster_up() {
  local data="${1:-$ROOT/.kafka-cluster}" n="${2:-3}"
  fetch
  mkdir -p "$data"; data="$(cd "$data" && pwd)"
  [ "$n" -ge 2 ] || { echo "kafka: a cluster needs at least 2 brokers" >&2; exit 1; }
  local cport id cluster ports=() bootstrap=""
  if [ -f "$data/cluster-id" ]; then cluster="$(cat "$data/cluster-id")"; else cluster="$(cluster_id)"; echo "$cluster" > "$data/cluster-id"; fi
  mkdir -p "$data/controller"
  if [ -f "$data/controller/port" ]; then cport="$(cat "$data/controller/port")"; else cport="$(free_port)"; echo "$cport" > "$data/controller/port"; fi
  # a dedicated controller: brokers come and go, the metadata quorum stays
  { cat <<PROPS
process.roles=controller
node.id=100
controller.quorum.voters=100@127.0.0.1:$cport
listeners=CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT
log.dirs=$data/controller/logs
PROPS
    common_props "$n" $((n - 1)); } > "$data/controller/server.properties"
  for id in $(seq 1 "$n"); do
    local node="$data/broker$id" port
    mkdir -p "$node"
    if [ -f "$node/port" ]; then port="$(cat "$node/port")"; else port="$(free_port)"; echo "$port" > "$node/port"; fi
    ports+=("$port"); bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:$port"
    { cat <<PROPS
process.roles=broker
node.id=$id
controller.quorum.voters=100@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$node/logs
replica.lag.time.max.ms=10000
PROPS
      common_props "$n" $((n - 1)); } > "$node/server.properties"
  done
  format_node "$data/controller" "$cluster"
  for id in $(seq 1 "$n"); do format_node "$data/broker$id" "$cluster"; done
  start "$data/controller" 256m
  for id in $(seq 1 "$n"); do start "$data/broker$id" 512m; done
  echo "$bootstrap" > "$data/bootstrap"
  echo "kafka: cluster of $n brokers at $bootstrap"
}

stop_node() {
  local node="$1"
  [ -f "$node/broker.pid" ] || return 0
  local pid; pid="$(cat "$node/broker.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$node/broker.pid"
}

down() {
  local data="${1:-$ROOT/.kafka}" node found=0
  # brokers first, the controller last, so brokers shut down cleanly against it
  for node in "$data" "$data"/broker* "$data/controller"; do
    if [ -f "$node/broker.pid" ]; then found=1; stop_node "$node"; fi
  done
  if [ "$found" = 1 ]; then echo "kafka: stopped"; else echo "kafka: not running (no broker.pid under $data)"; fi
}

case "${1:-}" in
  up) shift; up "$@" ;;
  secure-up) shift; secure_up "$@" ;;
  cluster-up) shift; cluster_up "$@" ;;
  start) shift; fetch; start "$@" ;;
  down) shift; down "$@" ;;
  fetch) fetch ;;
  *) echo "usage: $0 up [PORT] [DATA_DIR] | secure-up [PORT] [DATA_DIR] | cluster-up [DATA_DIR] [N] | start NODE_DIR | down [DATA_DIR] | fetch" >&2; exit 2 ;;
esac
