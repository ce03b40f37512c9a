#!/usr/bin/env bash
# scripts/kafka.sh — a single-node Apache Kafka (KRaft, combined broker+controller) run from
# the jars that scripts/install-deps.sh put in .local/kafka/libs, on 127.0.0.1 only.
#
#   scripts/kafka.sh start                 format storage on first use, start, wait until it
#                                          answers a metadata request (idempotent)
#   scripts/kafka.sh stop                  SIGTERM, clean shutdown (SIGKILL after KAFKA_STOP_TIMEOUT)
#   scripts/kafka.sh kill                  SIGKILL (fault tests)
#   scripts/kafka.sh pause | resume        SIGSTOP | SIGCONT (fault tests: a broker that hangs)
#   scripts/kafka.sh status                exit 0 iff running
#   scripts/kafka.sh topic-create NAME PARTITIONS   (no-op when the topic exists)
#   scripts/kafka.sh topic-list
#   scripts/kafka.sh run-class CLASS [ARGS...]      any Kafka tool, e.g.
#                                          org.apache.kafka.tools.ProducerPerformance
#                                          org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DIR (data, config, logs
# and pid file; default .local/kafka-data), KAFKA_START_TIMEOUT (60 s), KAFKA_STOP_TIMEOUT (30 s),
# KAFKA_TOOL_OPTS (JVM options of the tool commands), JAVA_HOME.
#
# One node of a cluster (each node combined broker+controller, one KAFKA_DIR and pair of ports
# each, all formatted with the same cluster id; start them together, since a node answers
# only once a majority of the controllers is up):
#   KAFKA_NODE_ID         node.id (1)
#   KAFKA_QUORUM          controller.quorum.voters, e.g. 1@127.0.0.1:19101,2@127.0.0.1:19103,...
#                         (default: this node alone)
#   KAFKA_CLUSTER_ID      the id storage is formatted with (default: a new random one)
#   KAFKA_INTERNAL_RF     replication factor of Kafka's internal topics (consumer offsets,
#                         transaction state; min.isr 2 when it is 3 or more); default 1. The
#                         defaults of other topics stay at one replica, min.insync.replicas=1:
#                         services ask for more (KAFKA_TOPIC_REPLICATION_FACTOR).
#
# Secured listeners beside PLAINTEXT (off unless their port is set), for trying and testing
# the services' TLS and SASL settings; certificates from scripts/tls.sh in KAFKA_DIR/tls
# (ca.pem: the CA to trust; client.pem/client.key: a client certificate it signed):
#   KAFKA_SASL_SSL_PORT   SASL_SSL: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
#   KAFKA_MTLS_PORT       SSL requiring a client certificate signed by ca.pem
#   KAFKA_SASL_USERS      "user:password ...": PLAIN users (in the listener's JAAS) and SCRAM
#                         users (created or updated at every start with Kafka's ConfigCommand)
# (SCRAM against these Kafka 4 brokers needs librdkafka 2.6.1 or later, confluentinc/librdkafka
# #4895: the services' own build, scripts/install-deps.sh librdkafka, not Debian 12's 2.0.2.)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_DIR=$(realpath -m "${KAFKA_DIR:-$LOCAL/kafka-data}")
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-60}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_NODE_ID=${KAFKA_NODE_ID:-1}
KAFKA_QUORUM=${KAFKA_QUORUM:-$KAFKA_NODE_ID@127.0.0.1:$KAFKA_CONTROLLER_PORT}
KAFKA_CLUSTER_ID=${KAFKA_CLUSTER_ID:-}
KAFKA_INTERNAL_RF=${KAFKA_INTERNAL_RF:-1}
INTERNAL_MIN_ISR=$((KAFKA_INTERNAL_RF >= 3 ? 2 : 1))
LIBS="$LOCAL/kafka/libs"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
PID_FILE="$KAFKA_DIR/kafka.pid"
LOG="$KAFKA_DIR/server.log"
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-}
KAFKA_MTLS_PORT=${KAFKA_MTLS_PORT:-}
KAFKA_SASL_USERS=${KAFKA_SASL_USERS:-}
TLS_DIR="$KAFKA_DIR/tls"

[[ -f "$LIBS/.complete" ]] || die "Kafka jars missing in $LIBS: run scripts/install-deps.sh kafka"

# Java 17 or newer: JAVA_HOME if set, else Debian's OpenJDK 17, else java on PATH.
JAVA=java
if [[ -n "${JAVA_HOME:-}" ]]; then JAVA="$JAVA_HOME/bin/java"
else for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do [[ -x "$j" ]] && JAVA=$j; done; fi

# TOOL: java with the Kafka classpath, for the tools (they log WARN+ to stderr).
# KAFKA_TOOL_OPTS replaces the JVM options tuned for quick start (e.g. '-Xmx1g' for benchmarks).
read -r -a tool_opts <<<"${KAFKA_TOOL_OPTS:--Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
TOOL_LOG4J="$LOCAL/kafka/tools-log4j2.xml"
TOOL=("$JAVA" "${tool_opts[@]}" -Dlog4j2.configurationFile="$TOOL_LOG4J" -cp "$LIBS/*")
if [[ ! -f "$TOOL_LOG4J" ]]; then
  cat >"$TOOL_LOG4J.$$" <<'EOF'
<Configuration status="warn">
  <Appenders><Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
  mv "$TOOL_LOG4J.$$" "$TOOL_LOG4J"
fi

# Our broker's pid, or nothing: the pid file if it names a kafka.Kafka with our config, else
# a search by command line (setsid forks when it is started as a process group leader, e.g.
# under job control, so $! is not always the broker's pid).
broker_pid() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || pid=""
  if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
    grep -qF "kafka.Kafka $KAFKA_DIR/server.properties"; then
    echo "$pid"
    return 0
  fi
  pid=$(pgrep -n -f "kafka.Kafka $KAFKA_DIR/server.properties\$") || return 1
  echo "$pid" >"$PID_FILE"
  echo "$pid"
}
running() { broker_pid >/dev/null; }
# exited: PID is gone or a zombie (its sockets are closed by then; PID 1 reaps it later).
exited() { local s; s=$(ps -o stat= -p "$1") || return 0; [[ "$s" == Z* ]]; }

# The secured listeners (none unless their ports are set): makes the CA, the broker's key
# store (key + certificate in one PEM) and a client certificate, then sets SECURED_LISTENERS,
# SECURED_MAP and SECURED_PROPERTIES for server.properties.
SECURED_LISTENERS="" SECURED_MAP="" SECURED_PROPERTIES=""
secure_listeners() {
  [[ -n "$KAFKA_SASL_SSL_PORT$KAFKA_MTLS_PORT" ]] || return 0
  "$ROOT/scripts/tls.sh" ca "$TLS_DIR" ca
  "$ROOT/scripts/tls.sh" cert "$TLS_DIR" ca broker
  "$ROOT/scripts/tls.sh" cert "$TLS_DIR" ca client
  cat "$TLS_DIR/broker.key" "$TLS_DIR/broker.pem" >"$TLS_DIR/broker-keystore.pem"
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
    SECURED_LISTENERS+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT" SECURED_MAP+=",SASL_SSL:SASL_SSL"
  fi
  if [[ -n "$KAFKA_MTLS_PORT" ]]; then
    SECURED_LISTENERS+=",MTLS://127.0.0.1:$KAFKA_MTLS_PORT" SECURED_MAP+=",MTLS:SSL"
  fi
  local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  local plain="org.apache.kafka.common.security.plain.PlainLoginModule required" entry
  for entry in $KAFKA_SASL_USERS; do plain+=" user_${entry%%:*}=\"${entry#*:}\""; done
  SECURED_PROPERTIES="sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
listener.name.mtls.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem"
}

write_config() {
  mkdir -p "$KAFKA_DIR/logs"
  secure_listeners
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh at every start; edits here are lost.
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_QUORUM
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT$SECURED_LISTENERS
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT$SECURED_LISTENERS
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT$SECURED_MAP
$SECURED_PROPERTIES
log.dirs=$KAFKA_DIR/logs
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=$KAFKA_INTERNAL_RF
transaction.state.log.replication.factor=$KAFKA_INTERNAL_RF
transaction.state.log.min.isr=$INTERNAL_MIN_ISR
share.coordinator.state.topic.replication.factor=$KAFKA_INTERNAL_RF
share.coordinator.state.topic.min.isr=$INTERNAL_MIN_ISR
group.initial.rebalance.delay.ms=0
EOF
  # Broker: INFO and up to server.log (rolled at 50 MB, 3 kept); nothing on stdout.
  cat >"$KAFKA_DIR/log4j2.xml" <<EOF
<Configuration status="warn">
  <Appenders>
    <RollingFile name="file" fileName="$LOG" filePattern="$LOG.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="50 MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# Format the storage once (a static quorum, so the ports may change later).
format_once() {
  [[ -f "$KAFKA_DIR/logs/meta.properties" ]] && return
  local id=$KAFKA_CLUSTER_ID
  [[ -n "$id" ]] || id=$("${TOOL[@]}" kafka.tools.StorageTool random-uuid)
  say "formatting storage in $KAFKA_DIR/logs (cluster id $id)"
  "${TOOL[@]}" kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties" >/dev/null
}

# SCRAM credentials live in the cluster's metadata: set them through the PLAINTEXT listener,
# one mechanism per request (the broker refuses two changes of one user in a request).
create_scram_users() {
  local entry user password mechanism
  for entry in $KAFKA_SASL_USERS; do
    user=${entry%%:*} password=${entry#*:}
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
      timeout 60 "${TOOL[@]}" org.apache.kafka.tools.ConfigCommand --bootstrap-server "$BOOTSTRAP" \
        --alter --entity-type users --entity-name "$user" \
        --add-config "$mechanism=[password=$password]" >/dev/null || {
        say "could not create SCRAM user $user ($mechanism)"
        return 1
      }
    done
  done
}

# One real metadata round trip, bounded in time.
answers() { timeout 20 "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1; }

start() {
  if running; then
    say "already running on $BOOTSTRAP (pid $(broker_pid), dir $KAFKA_DIR)"
    echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
    return 0
  fi
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_SSL_PORT $KAFKA_MTLS_PORT; do
    ! port_open 127.0.0.1 "$p" || die "port 127.0.0.1:$p is taken by another process"
  done
  write_config
  format_once
  say "starting on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT, dir $KAFKA_DIR, log $LOG)"
  # setsid + nohup: own session, survives this shell and a Ctrl-C in its terminal.
  setsid nohup "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" \
    -cp "$LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/stdout.log" 2>&1 </dev/null &
  local launched=$!
  echo "$launched" >"$PID_FILE"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until port_open 127.0.0.1 "$KAFKA_PORT" && answers; do
    # Dead only once the launched process is gone and no broker of this dir runs: until the
    # child has exec'd java its command line is this script's, which `running` cannot tell from
    # a broker that died (seen on a loaded machine: a node given up on at once).
    if { exited "$launched" && ! running; } || ((SECONDS >= deadline)); then
      tail -n 20 "$LOG" "$KAFKA_DIR/stdout.log" >&2 2>/dev/null || true
      running && stop
      die "Kafka did not come up within ${KAFKA_START_TIMEOUT}s (logs above, in $KAFKA_DIR)"
    fi
    sleep 1
  done
  create_scram_users || { stop; die "Kafka stopped: its SCRAM users could not be created"; }
  say "ready on $BOOTSTRAP (pid $(broker_pid), up in ${SECONDS}s)"
  echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
}

# stop_with SIGNAL TIMEOUT: signal the broker, wait until it is gone; SIGKILL after TIMEOUT.
stop_with() {
  local pid
  if ! pid=$(broker_pid); then
    say "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  say "stopping pid $pid (SIG$1)"
  kill -"$1" "$pid"
  if ! wait_until "$2" exited "$pid"; then
    say "still running after ${2}s: SIGKILL"
    kill -KILL "$pid"
    wait_until 10 exited "$pid" || die "pid $pid survived SIGKILL"
  fi
  rm -f "$PID_FILE"
}
stop() { stop_with TERM "$KAFKA_STOP_TIMEOUT"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) stop_with KILL 10 ;;
  pause | resume)
    pid=$(broker_pid) || die "not running"
    say "$1 pid $pid"
    if [[ "$1" == pause ]]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi ;;
  status)
    if running; then say "running on $BOOTSTRAP (pid $(broker_pid))"; else say "not running"; exit 1; fi ;;
  topic-create)
    [[ $# -eq 3 ]] || die "usage: $0 topic-create NAME PARTITIONS"
    "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create \
      --if-not-exists --topic "$2" --partitions "$3" --replication-factor 1 ;;
  topic-list) "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list ;;
  run-class) shift; [[ $# -ge 1 ]] || die "usage: $0 run-class CLASS [ARGS...]"; "${TOOL[@]}" "$@" ;;
  *) die "usage: $0 start|stop|kill|pause|resume|status|topic-create NAME PARTITIONS|topic-list|run-class CLASS [ARGS...]" ;;
esac
