#!/usr/bin/env bash
# Run tinywave on GPUs: one process per node driving all of its GPUs, on one node or several.
# `launch/gpu.sh --help` for usage; launch/README.md for a walk-through.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu.sh [OPTIONS] CONFIG [key=value ...] [--resume]

Runs `tinywave distill CONFIG <hardware overlay> <key=value ...>` with one process per node.
  one node (default)  one process on all local GPUs, no distributed start-up
  --slurm             inside an sbatch/salloc allocation: `srun --ntasks-per-node=1` over the
                      allocation's nodes; each process reads SLURM_* (tinywave_jax/parallel/
                      distributed.py) and the coordinator is the first node
  --coordinator H:P --num-processes N --process-id I
                      any other scheduler: run this on every node with its own --process-id
                      (exported as TINYWAVE_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID)

options:
  --hw FILE           hardware overlay (default configs/hw/h100x8.yaml; 'none': no overlay)
  --nodes N           --slurm: nodes to use (default: the allocation's SLURM_JOB_NUM_NODES)
  --port P            --slurm: coordinator port (default: derived from the job id)
  --log-dir DIR       --slurm: one log per task, DIR/task-<rank>.log
  --command CMD       trainer sub-command: distill (default) or train
  --dry-run           print the command (and exported variables) instead of running it
  --                  everything after it goes to the trainer unchanged
environment: TINYWAVE_BIN, the tinywave executable (default .venv/bin/tinywave, else on PATH)
EOF
}

die() { echo "gpu.sh: error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HW=$REPO/configs/hw/h100x8.yaml
SLURM=0
NODES=""
PORT=""
LOG_DIR=""
TRAINER=distill
COORDINATOR=""
NUM_PROCESSES=""
PROCESS_ID=""
DRY_RUN=0
RESUME=0
CONFIG=""
OVERRIDES=()

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --hw) need_value "$@"; HW=$2; shift 2 ;;
    --slurm) SLURM=1; shift ;;
    --nodes) need_value "$@"; NODES=$2; shift 2 ;;
    --port) need_value "$@"; PORT=$2; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift 2 ;;
    --command) need_value "$@"; TRAINER=$2; shift 2 ;;
    --coordinator) need_value "$@"; COORDINATOR=$2; shift 2 ;;
    --num-processes) need_value "$@"; NUM_PROCESSES=$2; shift 2 ;;
    --process-id) need_value "$@"; PROCESS_ID=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --resume) RESUME=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) if [[ -z $CONFIG ]]; then CONFIG=$1; else OVERRIDES+=("$1"); fi; shift ;;
  esac
done

[[ -n $CONFIG ]] || { usage >&2; exit 2; }
[[ $TRAINER == distill || $TRAINER == train ]] || die "--command must be distill or train, got '$TRAINER'"
explicit=0
[[ -n $COORDINATOR$NUM_PROCESSES$PROCESS_ID ]] && explicit=1
if [[ $explicit == 1 ]]; then
  [[ -n $COORDINATOR && -n $NUM_PROCESSES && -n $PROCESS_ID ]] \
    || die "--coordinator, --num-processes and --process-id go together"
  [[ $NUM_PROCESSES =~ ^[0-9]+$ && $PROCESS_ID =~ ^[0-9]+$ ]] || die "--num-processes/--process-id must be numbers"
  (( PROCESS_ID < NUM_PROCESSES )) || die "--process-id $PROCESS_ID must be below --num-processes $NUM_PROCESSES"
  [[ $SLURM == 0 ]] || die "--slurm and --coordinator/--num-processes/--process-id are exclusive"
fi
[[ -z $NODES || $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number, got '$NODES'"
[[ $SLURM == 1 || -z $NODES$PORT$LOG_DIR ]] || die "--nodes, --port and --log-dir need --slurm"

if [[ -n ${TINYWAVE_BIN:-} ]]; then
  TINYWAVE=$TINYWAVE_BIN
elif [[ -x $REPO/.venv/bin/tinywave ]]; then
  TINYWAVE=$REPO/.venv/bin/tinywave
else
  TINYWAVE=tinywave
fi

hw=()
if [[ $HW != none ]]; then   # the overlay comes before the user's overrides, which win
  py=python3
  [[ -x $REPO/.venv/bin/python ]] && py=$REPO/.venv/bin/python
  hw_lines=$(PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$py" -m tinywave_jax.hw "$HW") \
    || die "cannot read hardware overlay $HW"
  [[ -z $hw_lines ]] || mapfile -t hw <<< "$hw_lines"
fi
cmd=("$TINYWAVE" "$TRAINER" "$CONFIG" "${hw[@]}" "${OVERRIDES[@]}")
[[ $RESUME == 1 ]] && cmd+=(--resume)

exports=()
if [[ $explicit == 1 ]]; then
  exports=(TINYWAVE_COORDINATOR="$COORDINATOR" TINYWAVE_NUM_PROCESSES="$NUM_PROCESSES"
           TINYWAVE_PROCESS_ID="$PROCESS_ID")
elif [[ $SLURM == 0 && -z ${TINYWAVE_NUM_PROCESSES:-} ]]; then
  # One process: a batch script's SLURM_NTASKS must not make it wait for peers that never start.
  exports=(TINYWAVE_DISTRIBUTED=off)
fi
if [[ $SLURM == 1 ]]; then
  [[ -n ${SLURM_JOB_ID:-} ]] || die "--slurm must run inside an allocation (sbatch or salloc): SLURM_JOB_ID is not set"
  nodes=${NODES:-${SLURM_JOB_NUM_NODES:-1}}
  [[ -n $PORT ]] && exports+=(TINYWAVE_COORDINATOR_PORT="$PORT")
  logs=()
  if [[ -n $LOG_DIR ]]; then
    [[ $DRY_RUN == 1 ]] || mkdir -p "$LOG_DIR"
    logs=(--output="$LOG_DIR/task-%t.log")
  fi
  # One task per node (each drives all its GPUs); a failed task ends the step on every node.
  cmd=(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 "${logs[@]}" "${cmd[@]}")
fi

if [[ $DRY_RUN == 1 ]]; then
  line="+"
  for a in "${exports[@]}" "${cmd[@]}"; do line+=" $(printf '%q' "$a")"; done
  printf '%s\n' "$line"
  exit 0
fi
for e in "${exports[@]}"; do export "${e?}"; done
exec "${cmd[@]}"   # exec: a SIGTERM (preemption, scancel) reaches the trainer or srun directly
