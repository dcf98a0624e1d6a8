#!/usr/bin/env bash
# Real message brokers on loopback, without Docker, for the live tests (see the README, "Tests").
#
#   scripts/brokers.sh start   [kafka|rabbitmq|pubsub|all]...  start (a no-op when already up)
#   scripts/brokers.sh stop    [...]                            stop (a no-op when already down)
#   scripts/brokers.sh restart [...]                            stop then start, keeping the data
#   scripts/brokers.sh status  [...]                            up/down each; exit 0 only if all up
#   scripts/brokers.sh env     [...]                            `export BROKER_TEST_*=...` for those up:
#                                                               eval "$(scripts/brokers.sh env)"
#   scripts/brokers.sh clean   [...]                            stop and delete the data
#   scripts/brokers.sh kafka-run MAIN_CLASS [ARG]...            run a Kafka CLI class, e.g.
#       org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#   scripts/brokers.sh rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues [ARG]...
#                                                               RabbitMQ's CLI against our node
#
# The broker defaults to all. Endpoints:
#   kafka     127.0.0.1:9092 (Apache Kafka from Maven Central, KRaft broker+controller, 9093 controller;
#             127.0.0.1:9094 the same with a SASL/PLAIN login, user broker-rs, password broker-rs-secret)
#   rabbitmq  amqp://guest:guest@127.0.0.1:5672/%2f (Debian's rabbitmq-server; management 127.0.0.1:15672)
#   pubsub    http://127.0.0.1:8085 (Google's Pub/Sub emulator, project ids are free-form)
#
# Everything missing is installed on first use (apt packages, Maven artifacts). Settings:
#   BROKER_DATA_DIR   data, logs, pid files  (default ${TMPDIR:-/tmp}/broker-rs/<broker>)
#   BROKER_CACHE_DIR  downloaded Kafka jars  (default $HOME/.cache/broker-rs)
#   BROKER_START_TIMEOUT  seconds to wait for a broker to answer (default 90)
#   KAFKA_HEAP_OPTS   Kafka's JVM heap (default -Xmx768m -Xms256m)
set -euo pipefail

KAFKA_VERSION=4.4.0 # org.apache.kafka:kafka_2.13 from Maven Central; keep scripts/kafka/pom.xml equal.

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA_DIR=${BROKER_DATA_DIR:-${TMPDIR:-/tmp}/broker-rs}
CACHE_DIR=${BROKER_CACHE_DIR:-$HOME/.cache/broker-rs}
START_TIMEOUT=${BROKER_START_TIMEOUT:-90}
ALL_BROKERS=(kafka rabbitmq pubsub)

KAFKA_DIR=$DATA_DIR/kafka
KAFKA_LIBS=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_LOG=$KAFKA_DIR/server.log
KAFKA_SASL_USER=broker-rs
KAFKA_SASL_PASSWORD=broker-rs-secret

RMQ_DIR=$DATA_DIR/rabbitmq
RMQ_NODE=rabbit@localhost
RMQ_BIN=/usr/lib/rabbitmq/bin # Debian's real scripts, not /usr/sbin's wrappers that `su rabbitmq`
RMQ_PID=$RMQ_DIR/rabbitmq.pid          # ours
RMQ_NODE_PID=$RMQ_DIR/mnesia/node.pid  # RabbitMQ's own, which it deletes when it stops

PUBSUB_DIR=$DATA_DIR/pubsub
PUBSUB_BIN=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
PUBSUB_PID=$PUBSUB_DIR/emulator.pid
PUBSUB_LOG=$PUBSUB_DIR/emulator.log

# ---------------------------------------------------------------------------------------------
# Helpers

die() { echo "brokers.sh: $*" >&2; exit 1; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# took START_MS -> "1.2s"
took() {
  local ms=$(($(now_ms) - $1))
  printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# as_root CMD... : run as root, through sudo when we are not root.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=
# apt_install PKG... : install Debian packages without starting their services.
apt_install() {
  local policy=/usr/sbin/policy-rc.d created_policy=
  if [[ -z $APT_UPDATED ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    APT_UPDATED=1
  fi
  # Packaged daemons (rabbitmq-server) would otherwise start on 0.0.0.0 during the install.
  if [[ ! -e $policy ]]; then
    # Removed however the install ends: left behind, it would keep every later package's
    # service from starting on this machine.
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 || rc=$?
  if [[ -n $created_policy ]]; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
  return "$rc"
}

# ensure_java : a Java 17 or newer (Kafka 4 needs 17), installed from Debian when there is none.
ensure_java() {
  local v
  command -v java >/dev/null 2>&1 || apt_install default-jre-headless
  v=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ { print $2 }')
  [[ ${v%%.*} =~ ^[0-9]+$ && ${v%%.*} -ge 17 ]] ||
    die "java is version '$v'; Kafka 4 needs 17 or newer (apt-get install openjdk-17-jre-headless, then put it first on PATH)"
}

# port_open PORT : something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # $1 expands in the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# proc_alive PID : the process exists and is not a zombie.
proc_alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# cmdline_has PID TEXT : process PID runs and its command line contains TEXT.
cmdline_has() {
  [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# pid_alive PIDFILE TEXT : the pid in PIDFILE runs and its command line contains TEXT.
pid_alive() {
  [[ -s $1 ]] && cmdline_has "$(tr -dc '0-9' <"$1")" "$2"
}

# owned PIDFILE TEXT PORT : our broker's process runs. That is the pid file's, or else (pid file
# lost or stale) the process listening on PORT whose command line has TEXT, then written to PIDFILE.
owned() {
  local pid
  pid_alive "$1" "$2" && return 0
  pid=$(listener_pid "$3")
  cmdline_has "$pid" "$2" || return 1
  mkdir -p "$(dirname "$1")"
  echo "$pid" >"$1"
}

# wait_gone PID SECONDS : wait for a process to exit; 1 when it is still there.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# kill_pidfile NAME PIDFILE : TERM the process (and its group), KILL after 60 s, drop the pid file.
kill_pidfile() {
  local pid
  pid=$(tr -dc '0-9' <"$2")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 60; then
    echo "$1: pid $pid ignored SIGTERM for 60 s; sending SIGKILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "$1: pid $pid does not die"
  fi
  rm -f "$2"
}

# listener_pid PORT : pid of the process listening on 127.0.0.1:PORT (needs ss; empty if none).
listener_pid() {
  { ss -Hltnp "sport = :$1" 2>/dev/null || true; } |
    awk 'match($0, /pid=[0-9]+/) { print substr($0, RSTART + 4, RLENGTH - 4); exit }'
}

# fail_start NAME LOG MESSAGE : report a failed start with the end of the log.
fail_start() {
  {
    echo "$1: $3"
    if [[ -f $2 ]]; then
      echo "---- last lines of $2 ----"
      tail -n 40 "$2"
      echo "----"
    fi
  } >&2
  exit 1
}

# port_free NAME PORT... : fail when a port we need is taken by some other process.
port_free() {
  local name=$1 port
  shift
  for port in "$@"; do
    if port_open "$port"; then
      die "$name: 127.0.0.1:$port is already taken by another process (pid $(listener_pid "$port")); stop it first"
    fi
  done
}

# lock : one brokers.sh at a time starts or stops brokers (tests may restart them in parallel).
# The brokers we launch must not inherit fd 9, or they would hold the lock for good.
lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.lock"
  flock -w 600 9 || die "another brokers.sh has held $DATA_DIR/.lock for 10 minutes"
}

# ---------------------------------------------------------------------------------------------
# Kafka

kafka_java() {
  java -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*" "$@"
}

kafka_fetch() {
  [[ -f $KAFKA_LIBS/.complete ]] && return 0
  command -v mvn >/dev/null 2>&1 || apt_install maven
  echo "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS" >&2
  rm -rf "$KAFKA_LIBS.partial"
  mkdir -p "$(dirname "$KAFKA_LIBS")"
  mvn -q -B -f "$SCRIPT_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$KAFKA_LIBS.partial" \
    >"$KAFKA_LIBS.mvn.log" 2>&1 ||
    fail_start kafka "$KAFKA_LIBS.mvn.log" "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies"
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.partial" "$KAFKA_LIBS"
  touch "$KAFKA_LIBS/.complete"
}

kafka_write_config() {
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/brokers.sh on each start: a single-node KRaft cluster on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_PLAINTEXT://127.0.0.1:9094
advertised.listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_PLAINTEXT://127.0.0.1:9094
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# 9094 asks for a SASL/PLAIN login, so that tests can check what wrong credentials do.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

# Our Kafka JVM runs (found by its pid file, or by its controller port if that file was lost).
kafka_running() { owned "$KAFKA_PID" "$KAFKA_DIR/server.properties" 9093; }

kafka_up() { kafka_running && port_open 9092; }

kafka_start() {
  local t0 pid i
  t0=$(now_ms)
  if kafka_up; then
    echo "kafka: already running (pid $(cat "$KAFKA_PID"), 127.0.0.1:9092) ($(took "$t0"))"
    return 0
  fi
  kafka_stop_quiet # a JVM that runs but does not answer, a stale pid file
  port_free kafka 9092 9093 9094
  ensure_java
  kafka_fetch
  mkdir -p "$KAFKA_DIR/data"
  kafka_write_config
  if [[ ! -s $KAFKA_DIR/cluster.id ]]; then
    kafka_java -Dbroker.log.level=WARN kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster.id.tmp"
    mv "$KAFKA_DIR/cluster.id.tmp" "$KAFKA_DIR/cluster.id"
  fi
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    # --standalone: this node alone is the (dynamic) controller quorum.
    kafka_java -Dbroker.log.level=WARN kafka.tools.StorageTool format --standalone \
      --config "$KAFKA_DIR/server.properties" --cluster-id "$(cat "$KAFKA_DIR/cluster.id")" \
      >"$KAFKA_DIR/format.log" 2>&1 || fail_start kafka "$KAFKA_DIR/format.log" "formatting $KAFKA_DIR/data failed"
  fi
  if [[ -f $KAFKA_LOG ]]; then mv -f "$KAFKA_LOG" "$KAFKA_LOG.previous"; fi
  # setsid: its own process group, out of reach of the caller's Ctrl-C; exec keeps $! the JVM's pid.
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
  (exec 9>&- && cd "$KAFKA_DIR" && exec setsid nohup java ${KAFKA_HEAP_OPTS:--Xmx768m -Xms256m} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    </dev/null >"$KAFKA_LOG" 2>&1) &
  pid=$!
  echo "$pid" >"$KAFKA_PID"
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    proc_alive "$pid" || fail_start kafka "$KAFKA_LOG" "the broker exited during startup"
    # Logged once the broker has been unfenced by the controller and its listeners accept requests.
    if grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null && port_open 9092; then
      echo "kafka: started Kafka $KAFKA_VERSION (pid $pid, 127.0.0.1:9092, log $KAFKA_LOG) ($(took "$t0"))"
      return 0
    fi
    sleep 0.2
  done
  fail_start kafka "$KAFKA_LOG" "no 'Kafka Server started' within ${START_TIMEOUT}s (pid $pid left running)"
}

kafka_stop_quiet() {
  if kafka_running; then kill_pidfile kafka "$KAFKA_PID"; fi
  rm -f "$KAFKA_PID"
}

kafka_stop() {
  local t0
  t0=$(now_ms)
  if kafka_running; then
    kafka_stop_quiet
    echo "kafka: stopped ($(took "$t0"))"
  else
    rm -f "$KAFKA_PID"
    echo "kafka: not running ($(took "$t0"))"
  fi
}

kafka_clean() {
  local t0
  t0=$(now_ms)
  if [[ ! -e $KAFKA_DIR ]] && ! kafka_running; then
    echo "kafka: nothing to clean ($(took "$t0"))"
    return 0
  fi
  kafka_stop_quiet
  rm -rf "$KAFKA_DIR"
  echo "kafka: stopped, deleted $KAFKA_DIR ($(took "$t0"))"
}

kafka_status() {
  if kafka_up; then echo "kafka: up (pid $(cat "$KAFKA_PID"), 127.0.0.1:9092)"; else echo "kafka: down"; return 1; fi
}

kafka_env() {
  kafka_up || return 1
  echo "export BROKER_TEST_KAFKA=127.0.0.1:9092"
  echo "export BROKER_TEST_KAFKA_SASL=sasl_plaintext://$KAFKA_SASL_USER:$KAFKA_SASL_PASSWORD@127.0.0.1:9094"
}

kafka_run() {
  [[ $# -ge 1 ]] || die "usage: brokers.sh kafka-run MAIN_CLASS [ARG]..."
  ensure_java
  kafka_fetch
  kafka_java -Dbroker.log.level=WARN "$@"
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

rmq_ensure_installed() {
  [[ -x $RMQ_BIN/rabbitmq-server ]] && return 0
  echo "rabbitmq: installing Debian's rabbitmq-server" >&2
  apt_install rabbitmq-server || die "rabbitmq: apt-get install rabbitmq-server failed"
  # Were the package's own service started anyway (no policy-rc.d honoured), it would listen on
  # 0.0.0.0:5672 with another cookie: stop it so that ours can have the port.
  if pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
    as_root service rabbitmq-server stop >/dev/null 2>&1 || true
  fi
  # Nor should it start at the next boot (best effort: machines without an init system have
  # nothing to disable).
  if command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable rabbitmq-server >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    as_root update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
  fi
}

# rmq CMD ARG... : run one of RabbitMQ's scripts with this node's environment.
rmq() {
  local cmd=$1
  shift
  # HOME holds the Erlang cookie, shared by the node and the CLI tools whoever runs them.
  env HOME="$RMQ_DIR" \
    RABBITMQ_NODENAME="$RMQ_NODE" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=5672 \
    RABBITMQ_DIST_PORT=25672 \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" \
    RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
    RABBITMQ_PID_FILE="$RMQ_NODE_PID" \
    "$RMQ_BIN/$cmd" "$@" 9>&-
}

rmq_write_config() {
  mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  if [[ ! -s $RMQ_DIR/.erlang.cookie ]]; then
    (umask 077 && head -c 30 /dev/urandom | od -An -tx1 | tr -dc '0-9a-f' >"$RMQ_DIR/.erlang.cookie")
    chmod 400 "$RMQ_DIR/.erlang.cookie"
  fi
  echo "# Written by scripts/brokers.sh: everything is set through the environment." >"$RMQ_DIR/rabbitmq-env.conf"
  echo "[rabbitmq_management]." >"$RMQ_DIR/enabled_plugins"
  cat >"$RMQ_DIR/rabbitmq.conf" <<'EOF'
# Written by scripts/brokers.sh. AMQP listens on 127.0.0.1:5672 (RABBITMQ_NODE_IP_ADDRESS/PORT);
# guest/guest may log in from loopback only (the default).
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
EOF
}

# Our Erlang VM runs (found by our pid file, or by its distribution port if that file was lost).
rmq_running() { owned "$RMQ_PID" "-home $RMQ_DIR " 25672; }

rmq_up() { rmq_running && port_open 5672; }

rabbitmq_start() {
  local t0 i
  t0=$(now_ms)
  if rmq_up; then
    echo "rabbitmq: already running (pid $(cat "$RMQ_PID"), 127.0.0.1:5672) ($(took "$t0"))"
    return 0
  fi
  rmq_ensure_installed
  rmq_stop_quiet # a node that runs but does not answer, a stale pid file
  if port_open 5672 && pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
    die "rabbitmq: Debian's rabbitmq-server service holds 127.0.0.1:5672; stop and disable it first (sudo service rabbitmq-server stop; sudo update-rc.d rabbitmq-server disable, or systemctl disable --now rabbitmq-server)"
  fi
  port_free rabbitmq 5672 15672 25672
  rmq_write_config
  rm -f "$RMQ_NODE_PID"
  rmq rabbitmq-server -detached </dev/null >"$RMQ_DIR/log/detached.out" 2>&1 ||
    fail_start rabbitmq "$RMQ_DIR/log/detached.out" "rabbitmq-server -detached failed"
  # The node writes its pid file early in its boot; await_startup then waits for the whole boot.
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    [[ -s $RMQ_NODE_PID ]] && break
    sleep 0.2
  done
  [[ -s $RMQ_NODE_PID ]] || fail_start rabbitmq "$RMQ_DIR/log/$RMQ_NODE.log" "no pid file after ${START_TIMEOUT}s"
  cp "$RMQ_NODE_PID" "$RMQ_PID"
  if ! rmq rabbitmqctl -q -n "$RMQ_NODE" await_startup --timeout "$START_TIMEOUT" >"$RMQ_DIR/log/await.out" 2>&1; then
    cat "$RMQ_DIR/log/await.out" >&2
    fail_start rabbitmq "$RMQ_DIR/log/$RMQ_NODE.log" "the node did not finish booting within ${START_TIMEOUT}s"
  fi
  for ((i = 0; i < 50; i++)); do
    port_open 5672 && break
    sleep 0.2
  done
  port_open 5672 || fail_start rabbitmq "$RMQ_DIR/log/$RMQ_NODE.log" "booted but 127.0.0.1:5672 does not answer"
  echo "rabbitmq: started RabbitMQ $(rmq_version) (pid $(cat "$RMQ_PID"), 127.0.0.1:5672, log $RMQ_DIR/log) ($(took "$t0"))"
}

rmq_version() {
  dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null | cut -d- -f1
}

rmq_stop_quiet() {
  local pid
  if rmq_running; then
    pid=$(cat "$RMQ_PID")
    # A clean stop (quorum queues write their state); `stop PIDFILE` waits for the VM to exit.
    rmq rabbitmqctl -q -n "$RMQ_NODE" stop "$RMQ_PID" >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 30; then kill_pidfile rabbitmq "$RMQ_PID"; fi
  fi
  rm -f "$RMQ_PID"
}

rabbitmq_stop() {
  local t0
  t0=$(now_ms)
  if rmq_running; then
    rmq_stop_quiet
    echo "rabbitmq: stopped ($(took "$t0"))"
  else
    rm -f "$RMQ_PID"
    echo "rabbitmq: not running ($(took "$t0"))"
  fi
}

rabbitmq_clean() {
  local t0
  t0=$(now_ms)
  if [[ ! -e $RMQ_DIR ]] && ! rmq_running; then
    echo "rabbitmq: nothing to clean ($(took "$t0"))"
    return 0
  fi
  rmq_stop_quiet
  rm -rf "$RMQ_DIR"
  echo "rabbitmq: stopped, deleted $RMQ_DIR ($(took "$t0"))"
}

rabbitmq_status() {
  if rmq_up; then echo "rabbitmq: up (pid $(cat "$RMQ_PID"), 127.0.0.1:5672)"; else echo "rabbitmq: down"; return 1; fi
}

rabbitmq_env() { rmq_up && echo "export BROKER_TEST_RABBITMQ=amqp://guest:guest@127.0.0.1:5672/%2f"; }

# rabbitmq_tool rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues ARG... : with our node's cookie.
rabbitmq_tool() {
  local tool=$1
  shift
  rmq_ensure_installed
  rmq "$tool" -n "$RMQ_NODE" "$@"
}

# ---------------------------------------------------------------------------------------------
# Pub/Sub emulator

pubsub_ensure_installed() {
  [[ -x $PUBSUB_BIN ]] && return 0
  echo "pubsub: installing google-cloud-cli-pubsub-emulator" >&2
  apt_install google-cloud-cli-pubsub-emulator || die "pubsub: could not install google-cloud-cli-pubsub-emulator:
  it comes from Google's cloud-sdk apt repository, which this machine's apt sources must list (see
  'Installing the gcloud CLI' for Debian); without it, run the emulator with docker-compose.yml instead"
  [[ -x $PUBSUB_BIN ]] || die "pubsub: $PUBSUB_BIN missing after installing google-cloud-cli-pubsub-emulator"
}

pubsub_answers() { [[ $(curl -s -m 2 http://127.0.0.1:8085/ 2>/dev/null) == Ok* ]]; }

# Our emulator JVM runs (found by its pid file, or by its port if that file was lost).
pubsub_running() { owned "$PUBSUB_PID" cloud-pubsub-emulator 8085; }

pubsub_up() { pubsub_running && pubsub_answers; }

pubsub_start() {
  local t0 pid i
  t0=$(now_ms)
  if pubsub_up; then
    echo "pubsub: already running (pid $(cat "$PUBSUB_PID"), http://127.0.0.1:8085) ($(took "$t0"))"
    return 0
  fi
  pubsub_stop_quiet # a JVM that runs but does not answer, a stale pid file
  port_free pubsub 8085
  command -v curl >/dev/null 2>&1 || apt_install curl
  ensure_java
  pubsub_ensure_installed
  mkdir -p "$PUBSUB_DIR"
  if [[ -f $PUBSUB_LOG ]]; then mv -f "$PUBSUB_LOG" "$PUBSUB_LOG.previous"; fi
  # Not `gcloud beta emulators pubsub start`: its Python wrapper would stand between us and the JVM.
  # The package's launcher execs java, so $! is the JVM (and, through setsid, its process group).
  (exec 9>&- && cd "$PUBSUB_DIR" && exec setsid nohup env CLOUD_PUBSUB_EMULATOR_OPTS="-Xmx512m -Xms64m" \
    "$PUBSUB_BIN" --host=127.0.0.1 --port=8085 </dev/null >"$PUBSUB_LOG" 2>&1) &
  pid=$!
  echo "$pid" >"$PUBSUB_PID"
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    proc_alive "$pid" || fail_start pubsub "$PUBSUB_LOG" "the emulator exited during startup"
    if pubsub_answers; then
      echo "pubsub: started the Pub/Sub emulator (pid $pid, http://127.0.0.1:8085, log $PUBSUB_LOG) ($(took "$t0"))"
      return 0
    fi
    sleep 0.2
  done
  fail_start pubsub "$PUBSUB_LOG" "http://127.0.0.1:8085 did not answer within ${START_TIMEOUT}s (pid $pid left running)"
}

pubsub_stop_quiet() {
  if pubsub_running; then kill_pidfile pubsub "$PUBSUB_PID"; fi
  rm -f "$PUBSUB_PID"
}

pubsub_stop() {
  local t0
  t0=$(now_ms)
  if pubsub_running; then
    pubsub_stop_quiet
    echo "pubsub: stopped ($(took "$t0"))"
  else
    rm -f "$PUBSUB_PID"
    echo "pubsub: not running ($(took "$t0"))"
  fi
}

pubsub_clean() {
  local t0
  t0=$(now_ms)
  if [[ ! -e $PUBSUB_DIR ]] && ! pubsub_running; then
    echo "pubsub: nothing to clean ($(took "$t0"))"
    return 0
  fi
  pubsub_stop_quiet
  rm -rf "$PUBSUB_DIR"
  echo "pubsub: stopped, deleted $PUBSUB_DIR ($(took "$t0"))"
}

pubsub_status() {
  if pubsub_up; then echo "pubsub: up (pid $(cat "$PUBSUB_PID"), http://127.0.0.1:8085)"; else echo "pubsub: down"; return 1; fi
}

pubsub_env() { pubsub_up && echo "export BROKER_TEST_PUBSUB=http://127.0.0.1:8085"; }

# ---------------------------------------------------------------------------------------------
# Main

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# brokers ARG... : the brokers named (default all), checked.
brokers() {
  local b
  [[ $# -eq 0 ]] && set -- all
  for b in "$@"; do
    case $b in
      all) printf '%s\n' "${ALL_BROKERS[@]}" ;;
      kafka | rabbitmq | pubsub) echo "$b" ;;
      *) die "unknown broker '$b' (kafka, rabbitmq, pubsub or all)" ;;
    esac
  done | awk '!seen[$0]++'
}

main() {
  local action=${1:-}
  [[ -n $action ]] || usage
  shift
  case $action in
    kafka-run) kafka_run "$@"; return ;;
    rabbitmqctl | rabbitmq-diagnostics | rabbitmq-queues) rabbitmq_tool "$action" "$@"; return ;;
    start | stop | restart | status | env | clean) ;;
    -h | --help | help) usage ;;
    *) echo "brokers.sh: unknown command '$action'" >&2; usage ;;
  esac
  local list b rc=0
  list=$(brokers "$@")
  case $action in start | stop | restart | clean) lock ;; esac
  for b in $list; do
    case $action in
      start) "${b}_start" ;;
      stop) "${b}_stop" ;;
      restart)
        "${b}_stop"
        "${b}_start"
        ;;
      clean) "${b}_clean" ;;
      status) "${b}_status" || rc=1 ;;
      env) "${b}_env" || echo "# $b: down" ;;
    esac
  done
  return "$rc"
}

main "$@"
