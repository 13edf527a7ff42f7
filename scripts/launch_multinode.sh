#!/usr/bin/env bash
# Start distillm on one node of a multi-node job without ssh: run this on every node
# with the same hostfile and master address, each with its own node rank.
#
#   scripts/launch_multinode.sh HOSTFILE NODE_RANK MASTER_ADDR [MASTER_PORT] -- STAGE [overrides...]
#
# HOSTFILE lists one node per line, MPI style:   node-a slots=8
#                                                node-b slots=8
# The job's world size is the sum of the slots; ranks on node k follow those of nodes < k.
# With ssh between the nodes, the plain launcher does the same from one node:
#   deepspeed --hostfile HOSTFILE --no_local_rank --module distillm_cli.cli distill ...
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,12p' "$0"; exit 2
fi
hostfile=$1 node_rank=$2 master_addr=$3; shift 3
master_port=29500
if [ "$1" != "--" ]; then master_port=$1; shift; fi
[ "$1" = "--" ] && shift
here=$(cd "$(dirname "$0")/.." && pwd)
deepspeed_bin=${DEEPSPEED:-$here/.venv/bin/deepspeed}
exec "$deepspeed_bin" --hostfile "$hostfile" --no_ssh --node_rank "$node_rank" \
  --master_addr "$master_addr" --master_port "$master_port" \
  --no_local_rank --module distillm_cli.cli "$@"
