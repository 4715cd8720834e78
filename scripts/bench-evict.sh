#!/usr/bin/env bash
# Issue-16 figures: every eviction policy (and the offline oracle) x {1k, 2k, 5k, 10k, 30k}
# blocks on the conversation, synthetic and generated agentic traces, plain and with a
# 64-request lookahead; the three-tier configuration with and without lookahead. Prints
# markdown on standard output (hit rates are deterministic; no timing here).
set -euo pipefail
cd "$(dirname "$0")/.."
memwall=${MEMWALL:-.build/release/memwall}
data=../shared/data/traces
[ -x "$memwall" ] || { echo "bench-evict: build first: swift build -c release --product memwall" >&2; exit 3; }
[ -f "$data/conversation_trace.jsonl" ] || { echo "bench-evict: $data is missing; skipping" >&2; exit 0; }
agentic=$(mktemp --suffix=.jsonl); trap 'rm -f "$agentic"' EXIT
"$memwall" kv generate --kind agentic --requests 12000 --seed 1 > "$agentic"
table() {   # trace-name file [extra replay options]
  local name=$1 file=$2; shift 2
  echo "**$name**$([ $# -gt 0 ] && echo " ($*)")"
  echo
  echo "| blocks | lru | lfuda | arc | s3fifo | wtinylfu | kvaware | belady (oracle) | best online | max(lru, lfuda) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for n in 1000 2000 5000 10000 30000; do
    "$memwall" kv replay "$file" --tiers "dram:$n" --policy all --json --quiet "$@" |
      jq -r --arg n "$n" '
        [.policies[]] as $p
        | ($p | map({key: (.policy + (if .lookahead > 0 then "+" else "" end)), value: .hitRate}) | from_entries) as $r
        | def f(x): (x * 10000 | round / 10000 | tostring);
          def pick(k): if $r[k + "+"] then $r[k + "+"] else $r[k] end;
          ["lru","lfuda","arc","s3fifo","wtinylfu","kvaware"] as $names
          | ($names | map(pick(.)) | max) as $bo
          | "| \($n) | " + ($names | map(f(pick(.))) | join(" | ")) + " | \(f($r["belady"])) | \(f($bo)) | \(f([pick("lru"), pick("lfuda")] | max)) |"'
  done
  echo
}
table conversation "$data/conversation_trace.jsonl"
table conversation "$data/conversation_trace.jsonl" --lookahead 64
table synthetic "$data/synthetic_trace.jsonl"
table synthetic "$data/synthetic_trace.jsonl" --lookahead 64
table "agentic (memwall kv generate --seed 1)" "$agentic"
table "agentic (memwall kv generate --seed 1)" "$agentic" --lookahead 64
echo "**three tiers dram:5000,far:15000,nvme:100000, conversation** (share = hits served from DRAM / all hits)"
echo
echo "| policy | hit | share from DRAM | hit +lookahead 64 | share from DRAM +lookahead 64 | blocks prefetched |"
echo "|---|---|---|---|---|---|"
"$memwall" kv replay "$data/conversation_trace.jsonl" --tiers dram:5000,far:15000,nvme:100000 --policy all --lookahead 64 --json --quiet |
  jq -r '
    def f(x): (x * 10000 | round / 10000 | tostring);
    def share(p): if p.tiers | map(.hits) | add > 0 then p.tiers[0].hits / (p.tiers | map(.hits) | add) else 0 end;
    (.policies | map(select(.lookahead == 0))) as $plain
    | (.policies | map(select(.lookahead > 0)) | map({key: .policy, value: .}) | from_entries) as $ahead
    | $plain[] | . as $p | ($ahead[$p.policy]) as $a
    | "| \($p.policy) | \(f($p.hitRate)) | \(f(share($p))) | \(if $a then f($a.hitRate) else "–" end) | \(if $a then f(share($a)) else "–" end) | \(if $a then $a.prefetchedBlocks else 0 end) |"'
