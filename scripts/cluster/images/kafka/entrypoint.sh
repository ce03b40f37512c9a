#!/bin/bash
# The official apache/kafka image's start, in its essentials: every KAFKA_* variable except the
# JVM's becomes a property (KAFKA_LOG_DIRS -> log.dirs: "_" is ".", "__" is "_", "___" is "-"),
# the storage is formatted with CLUSTER_ID unless it already is, then the broker runs.
set -euo pipefail
config=/opt/kafka/config/server.properties
: >"$config"
while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_OPTS | KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS) continue ;;
    KAFKA_*) ;;
    *) continue ;;
  esac
  key=${name#KAFKA_}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  key=${key//@/_}
  printf '%s=%s\n' "${key,,}" "$value" >>"$config"
done < <(env)
cat >/opt/kafka/config/log4j2.xml <<'XML'
<Configuration>
  <Appenders><Console name="out" target="SYSTEM_OUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="INFO"><AppenderRef ref="out"/></Root></Loggers>
</Configuration>
XML
java=(java -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.xml -cp '/opt/kafka/libs/*')
"${java[@]}" kafka.tools.StorageTool format --ignore-formatted -t "${CLUSTER_ID:?CLUSTER_ID is not set}" -c "$config"
# shellcheck disable=SC2086  # the options are words
exec "${java[@]}" ${KAFKA_HEAP_OPTS:--Xmx1g} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError kafka.Kafka "$config"
