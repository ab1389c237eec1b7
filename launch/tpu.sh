#!/usr/bin/env bash
# Run tinywave on a Cloud TPU VM slice: the same command on every worker, one log per worker.
# `launch/tpu.sh --help` for usage; launch/README.md for a walk-through.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu.sh [OPTIONS] ACTION [ARGS]

actions:
  create            create the TPU (a queued resource with --queued, else `tpu-vm create`)
  delete            delete it
  deploy            put the code on every worker (git archive of --ref, or git checkout with
                    --git-url) and install it into DIR/.venv
  run CONFIG [key=value ...] [--resume]
                    stop a trainer still recorded in this run's pid file, then start
                    `tinywave distill CONFIG ...` on all workers under nohup
  corpus-build [ARGS ...]
                    `tinywave corpus build ARGS --num-hosts N --host-index I` on every worker
                    under nohup, each its own share: N and I are the worker count and number from
                    the TPU metadata (what jax.process_count()/process_index() report); ARGS must
                    give --out (shared: gs://...). Pid file and log as for run, in --run-dir
                    (default here runs/corpus). Then: --worker 0 exec corpus finalize OUT
  exec [ARGS ...]   `tinywave ARGS` in the foreground on --worker (default all), in --remote-dir;
                    the output comes back, the exit status is the workers' (e.g. --worker 0 exec
                    corpus finalize gs://B/corpus, export-hf, corpus info)
  stop              SIGTERM the trainer recorded in the pid file (SIGKILL after --stop-timeout s)
  logs              last --lines lines of each worker's log (--follow to keep reading)
  status            the TPU's state, and whether each worker's recorded trainer is alive

options (environment variable in brackets):
  --name NAME            TPU / queued resource name [TPU_NAME]
  --zone ZONE            [TPU_ZONE]
  --project PROJECT      [TPU_PROJECT]
  --accelerator TYPE     e.g. v5p-64, v5litepod-16, v6e-32 (create) [TPU_ACCELERATOR]
  --runtime VERSION      TPU software version (create; default from the accelerator) [TPU_RUNTIME_VERSION]
  --queued               use a queued resource (create/delete/status) [TPU_QUEUED=1]
  --spot                 spot capacity (create) [TPU_SPOT=1]
  --ref REF              git ref to deploy (default HEAD) [TINYWAVE_REF]
  --git-url URL          deploy by `git fetch URL REF` on the workers instead of copying [TINYWAVE_GIT_URL]
  --remote-dir DIR       code folder on the workers, relative to the home (default tinywave) [TINYWAVE_REMOTE_DIR]
  --run-dir DIR          logs and pid files, relative to --remote-dir (default runs/main;
                         runs/corpus for corpus-build) [TINYWAVE_RUN_DIR]
  --hw FILE              hardware overlay (configs/hw/*.yaml), passed as key=value overrides
  --command CMD          trainer sub-command: distill (default) or train
  --env KEY=VALUE        export this on the workers before the trainer starts (repeatable)
  --worker W             all (default) or a worker number (logs/status/stop)
  --python PY            python that creates the workers' venv (default: python3.12, 3.11 or python3) [TINYWAVE_PYTHON]
  --install CMD          install command run in --remote-dir (default: venv + pip install -e . 'jax[tpu]')
  --lines N              logs: lines to show (default 50)
  --follow               logs: keep following
  --stop-timeout S       seconds between SIGTERM and SIGKILL (default 120: time to checkpoint)
  --dry-run              print the commands instead of running them
  --                     everything after it goes to the trainer unchanged

Everything after corpus-build or exec goes to tinywave unchanged (give this script's options
before the action; a leading -- is dropped).
EOF
}

die() { echo "tpu.sh: error: $*" >&2; exit 2; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR=${TPU_ACCELERATOR:-}
RUNTIME=${TPU_RUNTIME_VERSION:-}
QUEUED=${TPU_QUEUED:-0}
SPOT=${TPU_SPOT:-0}
REF=${TINYWAVE_REF:-HEAD}
GIT_URL=${TINYWAVE_GIT_URL:-}
REMOTE_DIR=${TINYWAVE_REMOTE_DIR:-tinywave}
RUN_DIR=${TINYWAVE_RUN_DIR:-}
PYTHON=${TINYWAVE_PYTHON:-}
INSTALL=""
HW=""
TRAINER=distill
WORKER=all
LINES=50
FOLLOW=0
STOP_TIMEOUT=120
DRY_RUN=0
ACTION=""
ENVS=()
CONFIG=""
RESUME=0
OVERRIDES=()
TW_ARGS=()   # corpus-build / exec: the tinywave arguments

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --accelerator) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --runtime) need_value "$@"; RUNTIME=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --git-url) need_value "$@"; GIT_URL=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --run-dir) need_value "$@"; RUN_DIR=$2; shift 2 ;;
    --hw) need_value "$@"; HW=$2; shift 2 ;;
    --command) need_value "$@"; TRAINER=$2; shift 2 ;;
    --env) need_value "$@"; [[ $2 == [A-Za-z_]*=* ]] || die "--env wants KEY=VALUE, got '$2'"
           ENVS+=("$2"); shift 2 ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --install) need_value "$@"; INSTALL=$2; shift 2 ;;
    --lines) need_value "$@"; LINES=$2; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --stop-timeout) need_value "$@"; STOP_TIMEOUT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --resume) RESUME=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) if [[ -z $ACTION && ( $1 == corpus-build || $1 == exec ) ]]; then
         ACTION=$1; shift; [[ ${1:-} == -- ]] && shift
         TW_ARGS=("$@"); break
       elif [[ -z $ACTION ]]; then ACTION=$1
       elif [[ -z $CONFIG ]]; then CONFIG=$1
       else OVERRIDES+=("$1"); fi
       shift ;;
  esac
done

[[ -n $ACTION ]] || { usage >&2; exit 2; }
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a number, got '$WORKER'"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'"
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die "--stop-timeout must be whole seconds, got '$STOP_TIMEOUT'"
[[ $TRAINER == distill || $TRAINER == train ]] || die "--command must be distill or train, got '$TRAINER'"
[[ $ACTION == run || ( -z $CONFIG && $RESUME == 0 ) ]] || die "$ACTION takes no CONFIG, overrides or --resume"
[[ -n $NAME ]] || die "give the TPU name (--name or TPU_NAME)"
[[ -n $ZONE ]] || die "give the zone (--zone or TPU_ZONE)"
[[ -n $PROJECT ]] || die "give the project (--project or TPU_PROJECT)"
[[ -z $HW || ( $ACTION != corpus-build && $ACTION != exec ) ]] || die "--hw is for run (config overrides), not $ACTION"
if [[ -z $RUN_DIR ]]; then   # a corpus build keeps its pid files and logs apart from the trainer's
  if [[ $ACTION == corpus-build ]]; then RUN_DIR=runs/corpus; else RUN_DIR=runs/main; fi
fi
if [[ $ACTION == exec ]]; then
  [[ ${#TW_ARGS[@]} -gt 0 ]] || die "exec needs a tinywave command (e.g. --worker 0 exec corpus finalize gs://BUCKET/corpus)"
fi
has_n=0
if [[ $ACTION == corpus-build ]]; then
  # The share: both flags (one worker: rebuild that host's share) or neither (each worker's own).
  has_out=0; has_i=0
  for a in "${TW_ARGS[@]}"; do
    case $a in
      --out|--out=*) has_out=1 ;;
      --num-hosts|--num-hosts=*) has_n=1 ;;
      --host-index|--host-index=*) has_i=1 ;;
    esac
  done
  [[ $has_out == 1 ]] || die "corpus-build needs --out (one folder shared by every worker: gs://BUCKET/corpus)"
  [[ $has_n == "$has_i" ]] || die "corpus-build: give both --num-hosts and --host-index (one worker's share, with --worker I) or neither (every worker's share from the TPU metadata)"
  [[ $has_n == 0 || $WORKER != all ]] || die "corpus-build: --num-hosts/--host-index with --worker all would build the same share on every worker; leave both out (each worker builds its own) or pick one worker with --worker I"
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GCLOUD_WHERE=(--zone="$ZONE" --project="$PROJECT")

# POSIX shell quoting (plain words stay bare): for the workers' shell and for --dry-run output.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# Prints the command (quoted, copy-pasteable) under --dry-run, else runs it.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    local a line="+"
    for a in "$@"; do line+=" $(q "$a")"; done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}
qargs() { local a out=""; for a in "$@"; do out+=" $(q "$a")"; done; printf '%s' "${out# }"; }

# Runs one shell script on the chosen worker(s).
on_workers() { run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker="$WORKER" --command "$1"; }

# Remote script prefix: into the code folder; per-worker file names from the host name.
remote_prelude() {
  # shellcheck disable=SC2016  # $(hostname), $run, ... expand on the worker, not here
  printf 'set -eu; cd %s; host=$(hostname); run=%s; pidfile="$run/trainer-$host.pid"; log="$run/worker-$host.log"; ' \
    "$(q "$REMOTE_DIR")" "$(q "$RUN_DIR")"
}

# Remote script: stop the trainer whose PID the pid file recorded (only if that PID still runs a
# tinywave command: a PID reused by another program after a reboot is left alone). Never by name.
remote_stop() {
  cat <<EOF
alive() { st=\$(ps -o stat= -p "\$1" 2>/dev/null) && [ "\${st#Z}" = "\$st" ]; }; \
if [ ! -f "\$pidfile" ]; then echo "\$host: no pid file \$pidfile"; \
else pid=\$(cat "\$pidfile"); \
if alive "\$pid" && grep -qa tinywave "/proc/\$pid/cmdline"; then \
echo "\$host: stopping trainer pid \$pid (SIGTERM)"; kill -TERM "\$pid" || true; \
n=0; while alive "\$pid" && [ \$n -lt $((STOP_TIMEOUT * 5)) ]; do sleep 0.2; n=\$((n + 1)); done; \
if alive "\$pid"; then echo "\$host: pid \$pid still running after ${STOP_TIMEOUT}s: SIGKILL"; kill -KILL "\$pid" || true; fi; \
else echo "\$host: recorded pid \$pid is not a running trainer"; fi; \
rm -f "\$pidfile"; fi; 
EOF
}

# Remote script: this worker's share of a host-sharded job from the TPU metadata server, as jax's
# Cloud TPU cluster detection reads it (process index = agent-worker-number, process count = the
# number of worker-network-endpoints; one slice). Sets $share to "--num-hosts N --host-index I".
remote_host_share() {
  cat <<'EOF' | tr '\n' ' '
md() { curl -sf --retry 5 --retry-delay 1 --max-time 10 -H Metadata-Flavor:Google "http://${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes/$1"; };
if ! idx=$(md agent-worker-number) || ! eps=$(md worker-network-endpoints); then
echo "$host: cannot read agent-worker-number / worker-network-endpoints from the TPU metadata server; give --num-hosts N --host-index I and --worker I" >&2; exit 1; fi;
nhosts=$(printf '%s\n' "$eps" | tr ',' '\n' | grep -c . || true);
case $idx in ''|*[!0-9]*) echo "$host: agent-worker-number '$idx' is not a number" >&2; exit 1 ;; esac;
if [ "$idx" -ge "$nhosts" ]; then echo "$host: worker $idx but $nhosts worker-network-endpoints in the TPU metadata" >&2; exit 1; fi;
share="--num-hosts $nhosts --host-index $idx";
EOF
}

default_runtime() {
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime for accelerator '$1': give --runtime" ;;
  esac
}

# Hardware overlay -> key=value overrides (read here, with this checkout's tinywave_jax.hw).
hw_overrides() {
  local py=python3
  [[ -x $REPO/.venv/bin/python ]] && py=$REPO/.venv/bin/python
  PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$py" -m tinywave_jax.hw "$1"
}

case $ACTION in
  create)
    [[ -n $ACCELERATOR ]] || die "create needs --accelerator (e.g. v5p-64)"
    [[ -n $RUNTIME ]] || RUNTIME=$(default_runtime "$ACCELERATOR")
    spot=(); [[ $SPOT == 1 ]] && spot=(--spot)
    if [[ $QUEUED == 1 ]]; then
      run_cmd gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${GCLOUD_WHERE[@]}" \
        --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}"
    else
      run_cmd gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_WHERE[@]}" \
        --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
    fi
    ;;
  delete)
    if [[ $QUEUED == 1 ]]; then   # --force also deletes the TPU VM the request created
      run_cmd gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_WHERE[@]}" --force --quiet
    else
      run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_WHERE[@]}" --quiet
    fi
    ;;
  deploy)
    install=$INSTALL
    if [[ -z $install ]]; then
      # jax >= 0.10 needs Python >= 3.11 (Ubuntu 22.04 TPU images default to 3.10).
      # shellcheck disable=SC2016  # the default python is looked up on the worker
      py='$(command -v python3.12 || command -v python3.11 || command -v python3)'
      [[ -z $PYTHON ]] || py=$(q "$PYTHON")
      install="if [ ! -x .venv/bin/python ]; then py=$py; \"\$py\" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo \"\$(hostname): need Python >= 3.11 (apt-get install python3.11-venv; --python python3.11)\" >&2; exit 1; }; \"\$py\" -m venv .venv; fi; .venv/bin/python -m pip install -q --upgrade pip; .venv/bin/python -m pip install -q -e . 'jax[tpu]'"
    fi
    if [[ -n $GIT_URL ]]; then
      on_workers "set -eu; if [ ! -d $(q "$REMOTE_DIR")/.git ]; then git clone -q $(q "$GIT_URL") $(q "$REMOTE_DIR"); fi; cd $(q "$REMOTE_DIR"); git fetch -q origin $(q "$REF"); git checkout -q --detach FETCH_HEAD; git rev-parse HEAD > .deployed-ref; $install"
    else
      sha=$(git -C "$REPO" rev-parse --verify "$REF^{commit}") || die "--ref $REF is not a commit of $REPO"
      if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no) ]]; then
        echo "tpu.sh: note: uncommitted changes are not deployed (the archive is $REF = ${sha:0:12})" >&2
      fi
      tarball="${TMPDIR:-/tmp}/tinywave-${sha:0:12}.tar.gz"
      run_cmd git -C "$REPO" archive --format=tar.gz --prefix=tinywave/ -o "$tarball" "$sha"
      run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$NAME:tinywave-src.tar.gz" "${GCLOUD_WHERE[@]}" --worker="$WORKER"
      # The package folder is replaced (no stale modules); .venv and runs/ are kept.
      on_workers "set -eu; mkdir -p $(q "$REMOTE_DIR"); rm -rf $(q "$REMOTE_DIR")/tinywave_jax; tar -xzf tinywave-src.tar.gz -C $(q "$REMOTE_DIR") --strip-components=1; rm -f tinywave-src.tar.gz; cd $(q "$REMOTE_DIR"); echo $sha > .deployed-ref; $install"
    fi
    ;;
  run)
    [[ -n $CONFIG ]] || die "run needs CONFIG (a path on the workers, relative to --remote-dir)"
    hw=()
    if [[ -n $HW ]]; then   # the overlay comes before the user's overrides, which win
      hw_lines=$(hw_overrides "$HW") || die "cannot read hardware overlay $HW"
      [[ -z $hw_lines ]] || mapfile -t hw <<< "$hw_lines"
    fi
    args=("$CONFIG" "${hw[@]}" "${OVERRIDES[@]}")
    [[ $RESUME == 1 ]] && args+=(--resume)
    exports=""
    [[ ${#ENVS[@]} -gt 0 ]] && exports="export $(qargs "${ENVS[@]}"); "
    on_workers "$(remote_prelude)mkdir -p \"\$run\"; $(remote_stop)${exports}nohup .venv/bin/tinywave $TRAINER $(qargs "${args[@]}") >> \"\$log\" 2>&1 < /dev/null & echo \$! > \"\$pidfile\"; echo \"\$host: started trainer pid \$(cat \"\$pidfile\"), log $(q "$REMOTE_DIR")/\$log\""
    ;;
  corpus-build)
    exports=""
    [[ ${#ENVS[@]} -gt 0 ]] && exports="export $(qargs "${ENVS[@]}"); "
    share_script="share=''; "
    [[ $has_n == 1 ]] || share_script=$(remote_host_share)
    # $share is left unquoted on the worker on purpose: two option/value pairs of plain words.
    on_workers "$(remote_prelude)${share_script}mkdir -p \"\$run\"; $(remote_stop)${exports}nohup .venv/bin/tinywave corpus build $(qargs "${TW_ARGS[@]}") \$share >> \"\$log\" 2>&1 < /dev/null & echo \$! > \"\$pidfile\"; echo \"\$host: started corpus build \${share:-(the given share)}, pid \$(cat \"\$pidfile\"), log $(q "$REMOTE_DIR")/\$log\""
    ;;
  exec)
    exports=""
    [[ ${#ENVS[@]} -gt 0 ]] && exports="export $(qargs "${ENVS[@]}"); "
    on_workers "set -eu; cd $(q "$REMOTE_DIR"); ${exports}.venv/bin/tinywave $(qargs "${TW_ARGS[@]}")"
    ;;
  stop)
    on_workers "$(remote_prelude)$(remote_stop)"
    ;;
  logs)
    follow=""; [[ $FOLLOW == 1 ]] && follow="-F "
    on_workers "$(remote_prelude)echo \"== \$host: \$log\"; tail -n $LINES $follow\"\$log\""
    ;;
  status)
    if [[ $QUEUED == 1 ]]; then
      run_cmd gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_WHERE[@]}" --format="value(state.state)"
    else
      run_cmd gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_WHERE[@]}" --format="value(state)"
    fi
    on_workers "$(remote_prelude)if [ -f \"\$pidfile\" ] && kill -0 \"\$(cat \"\$pidfile\")\" 2>/dev/null; then echo \"\$host: trainer pid \$(cat \"\$pidfile\") running\"; else echo \"\$host: no trainer running\"; fi; tail -n 1 \"\$log\" 2>/dev/null || true" \
      || echo "tpu.sh: workers not reachable (is the TPU up? see the state above)" >&2
    ;;
  *) die "unknown action '$ACTION' (create, delete, deploy, run, corpus-build, exec, stop, logs, status)" ;;
esac
