#!/usr/bin/env bash
# Issue 17's ranking study at toy scale: does each supernet recipe rank archs as stand-alone training does?
#
#   bash studies/rank_audit_toy/run.sh standalone        # ground truth: steps 4-5 per arch and seed (JOBS=2: two at once)
#   bash studies/rank_audit_toy/run.sh recipes a b c     # steps 1-2 per recipe, then its supernet scores
#   bash studies/rank_audit_toy/run.sh compare           # the figures, once both parts are done
#   bash studies/rank_audit_toy/run.sh claim a 0 1 2 3 4 # tools/study.py on recipe a's supernets, 5 seeds
#   bash studies/rank_audit_toy/run.sh supernet-seeds 0 1 2 3 4 # recipe a, 5 supernet seeds: its ranking noise
#   bash studies/rank_audit_toy/run.sh converged 0 1     # pilots of a less noisy ground truth (below), given seeds
#   bash studies/rank_audit_toy/run.sh converged-train1280 0 1
#   JOBS=2 bash studies/rank_audit_toy/run.sh paired 0 1   # the converged pilot with paired initialisation
#   JOBS=2 bash studies/rank_audit_toy/run.sh inband 0 1   # the in-band ground truth: 10 archs of the search's band
#   bash studies/rank_audit_toy/run.sh inband-supernets 0  # recipe a's supernet seed s scores the in-band archs
#   bash studies/rank_audit_toy/run.sh protocols 0         # cheaper protocols on supernet seed 0, both arch sets
#   bash studies/rank_audit_toy/run.sh protocols-extra 0   # racing's first rung and the ridge predictor's data
#   JOBS=2 bash studies/rank_audit_toy/run.sh claim-inband 0 0 1 2 3 4  # the claim at equal FLOPs: supernet seed 0,
#                                                          # its archs retrained with seeds 0-4 (claim_inband.py)
#   bash studies/rank_audit_toy/run.sh claim-inband-robust 0 0 1 2 3 4  # the same for det-search with finalists
#                                                          # (and their params tie-break) and with ensemble
#                                                          # scoring on supernets 0-2 (SUPERNETS=5: 0-4;
#                                                          # SEARCH_SEED=1: searches with another seed)
#   python studies/rank_audit_toy/pilots.py --scores ...  # the pilots against the shipped protocol (pilots.md)
#   python studies/rank_audit_toy/bn_probe.py --scores studies/rank_audit_toy/standalone_paired.jsonl
#   bash studies/rank_audit_toy/decompose.sh              # is the seed noise step 4's or step 5's?
#   python studies/rank_audit_toy/reevaluate.py           # the stand-alone detectors on 512 held-out images, then
#   bash studies/rank_audit_toy/run.sh compare studies/rank_audit_toy/standalone_toy_det_search_large.jsonl studies/rank_audit_toy/eval512
#
# Each recipe also scores the archs' top-1 on its step-1 classification supernet (step1_top1_<r>.jsonl):
# does step 1 learn over paths other than its reference? Every part resumes: run the same command again after a stop and it continues where it was (training
# with --resume, the score files skip what they hold). Trainings run on one thread each, so the two
# parts can run side by side on a 2-core machine. Results (small files) go to studies/rank_audit_toy/,
# training folders to output/rank_audit_toy/ (not committed).
#
# Recipes (steps 1-2 of configs/Toy, the same 4,000 + 2,500 iterations):
#   a  the shipped one: progressive warm-up toward the fixed reference arch (all shuffle_3x3)
#   b  no warm-up: every layer random from the first iteration (SPOS, DetNAS)
#   c  rotating warm-up: the same warm-up, but its fixed layers take a new random arch in each phase
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
HERE=studies/rank_audit_toy
RUNS=output/rank_audit_toy
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

archs() {
  [ -f "$HERE/archs.txt" ] || "$PY" tools/rank_audit.py sample --num 12 --seed 0 \
    --include 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0 --output "$HERE/archs.txt"
}

recipe_opts() {
  case "$1" in
    a) echo "" ;;
    b) echo "DETNAS.SAMPLER.PROGRESSIVE_ITERS 0" ;;
    c) echo "DETNAS.SAMPLER.PROGRESSIVE_REFERENCE rotating" ;;
    *) echo "unknown recipe '$1' (a, b or c)" >&2; exit 2 ;;
  esac
}

# Step 2's own options: (b)'s detection supernet diverged without clipping (NaN boxes at iteration 108,
# as the learning rate warmed up to 0.04), so its gradients are clipped (norm 1 per parameter).
det_opts() {
  case "$1" in
    b) echo "SOLVER.CLIP_GRADIENTS.ENABLED True SOLVER.CLIP_GRADIENTS.CLIP_TYPE norm SOLVER.CLIP_GRADIENTS.CLIP_VALUE 1.0" ;;
    *) echo "" ;;
  esac
}

# Steps 1-2 of recipe $1 into folder $2 (extra options of both steps: $6), then the scores of the archs of
# $ARCHS (default: the 13 of archs.txt): step-1 top-1 (protocol "$3-step1", file $5) and step-2 bbox AP
# (protocol $3, file $4).
supernets() {
  local r=$1 dir=$2 label=$3 det_scores=$4 cls_scores=$5 extra=${6:-} opts det_opts
  opts=$(recipe_opts "$r")
  det_opts=$(det_opts "$r")
  local cls=$dir/cls_supernet det=$dir/det_supernet
  # shellcheck disable=SC2086
  [ -f "$cls/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/cls_supernet.yaml --resume \
    OUTPUT_DIR "$cls" $opts $extra
  # Step 1's own check: top-1 of each arch's path (BN recalibrated) on the classification supernet.
  "$PY" tools/rank_audit.py supernet --config-file configs/Toy/search_cls.yaml --archs "${ARCHS:-$HERE/archs.txt}" \
    --protocol "$label-step1" --output "$cls_scores" MODEL.WEIGHTS "$cls/model_final.pth"
  # shellcheck disable=SC2086
  [ -f "$det/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/det_supernet.yaml --resume \
    OUTPUT_DIR "$det" MODEL.WEIGHTS "$cls/model_final.pth" $det_opts $extra
  "$PY" tools/rank_audit.py supernet --archs "${ARCHS:-$HERE/archs.txt}" --protocol "$label" \
    --output "$det_scores" MODEL.WEIGHTS "$det/model_final.pth"
}

recipe() {
  supernets "$1" "$RUNS/recipe_$1" "recipe-$1" "$HERE/supernet_$1.jsonl" "$HERE/step1_top1_$1.jsonl"
}

# How reproducible is a supernet's ranking? Recipe (a) trained with the given seeds (SEED and
# DETNAS.SAMPLER.SEED; seed 0 is the shipped config), each scoring the 13 archs as the search does (64 images of
# toy_det_search), on 512 held-out images (toy_det_search_large, whose first 64 are those: scoring noise) and by
# its step-1 top-1; supernet_noise.py then writes supernet_noise.md, and compare supernet_noise/compare.md
# against the paired ground truth.
supernet_seeds() {
  local s dir out=$HERE/supernet_noise
  mkdir -p "$out"
  for s in "$@"; do
    dir=$RUNS/supernet_noise/seed$s
    supernets a "$dir" "a-seed$s" "$out/a_seed$s.jsonl" "$out/a_seed${s}_step1.jsonl" "SEED $s DETNAS.SAMPLER.SEED $s"
    "$PY" tools/rank_audit.py supernet --archs "$HERE/archs.txt" --protocol "a-seed$s-eval512" \
      --output "$out/a_seed${s}_eval512.jsonl" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth" \
      DETNAS.SEARCH.EVAL_DATASET toy_det_search_large
  done
  "$PY" "$HERE/supernet_noise.py"
  # the same supernets in compare's terms: bootstrap intervals, gains over FLOPs and over the shipped seed
  local sup=()
  for f in "$out"/a_seed*.jsonl; do sup+=(--supernet "$f"); done
  "$PY" tools/rank_audit.py compare "${sup[@]}" --standalone "$HERE/standalone_paired.jsonl" --baseline a-seed0 \
    --output-dir "$out"
}

# DetNAS's claim (tools/study.py) on one recipe's supernets: step 3 searches its detection supernet, then
# det-search, cls-search, all-3x3 and a random arch of equal FLOPs are retrained with the given seeds, under
# the paired protocol (PAIRED_CLS / PAIRED_DET below: its p paired by seed is a fair test).
claim() {
  local r=$1 dir=$RUNS/recipe_$1
  shift
  recipe_opts "$r" >/dev/null
  [ -f "$dir/search/best_arch.yaml" ] || "$PY" search_net.py --config-file configs/Toy/search_det.yaml --resume \
    OUTPUT_DIR "$dir/search" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth"
  # the two folders tools/study.py reads, laid out as tools/run_pipeline.py writes them
  mkdir -p "$dir/pipeline"
  ln -sfn ../cls_supernet "$dir/pipeline/1_cls_supernet"
  ln -sfn ../search "$dir/pipeline/3_search"
  "$PY" tools/study.py --reuse --pipeline-dir "$dir/pipeline" --output-dir "$dir/study_paired" --seeds "$@" \
    --cls-opts "$PAIRED_CLS" --det-opts "$PAIRED_DET"
  cp "$dir/study_paired/study.md" "$HERE/claim_$r.md"
  cp "$dir/study_paired/study.json" "$HERE/claim_$r.json"
}

# A less noisy stand-alone protocol? In the shipped one (400 + 1,500 iterations) step 5's loss stays flat at
# ~1.3 from iteration 300 to the LR step at 1,300 (no progress at LR 0.04) and falls to ~1.0 only
# in the last 200 iterations; step 4's top-1 of one arch ranges 48-98.5% over seeds. Here step 4 trains 4x
# longer (1,600 iterations, ~3 min) and step 5 decays its LR by a cosine over the same 1,500 iterations: about
# the same cost. converged-train1280 also trains step 5 on toy_det_train_large (1,280 images, 4x toy_det_train's
# 320, which the shipped schedule sees ~37 times). Pilots on 6 archs (archs_pilot.txt); pilots.py says whether
# they separate them.
# *paired*: the converged protocol with paired initialisation (MODEL.DETNAS.PAIRED_INIT) in both steps: with
# one seed, every arch starts from the same stem, the same weights for the blocks it shares with another arch,
# the same heads and data order (common random numbers).
# Arch by arch (both seeds of an arch before the next): a stopped pilot already gives seed pairs.
PAIRED_CLS="SOLVER.MAX_ITER 1600 MODEL.DETNAS.PAIRED_INIT True"
PAIRED_DET="SOLVER.LR_SCHEDULER_NAME WarmupCosineLR MODEL.DETNAS.PAIRED_INIT True"
pilot() {
  local name=$1 cls_opts=$2 det_opts=$3
  shift 3
  "$PY" tools/rank_audit.py standalone --archs "${ARCHS:-$HERE/archs_pilot.txt}" --seeds "$@" --jobs "${JOBS:-1}" \
    --threads 1 --protocol "standalone-$name" --cls-opts "SOLVER.MAX_ITER 1600 $cls_opts" \
    --det-opts "SOLVER.LR_SCHEDULER_NAME WarmupCosineLR $det_opts" \
    --work-dir "$RUNS/standalone_$name" --output "$HERE/standalone_$name.jsonl"
}

# Searched archs retrained as the in-band ground truth's archs (same protocol and training folders), seed by
# seed: retrain_inband <score file> <arch file>... -- <seeds>
retrain_inband() {
  local out=$1 seed
  local archs=()
  shift
  while [ "$1" != "--" ]; do archs+=(--archs "$1"); shift; done
  shift
  for seed in "$@"; do
    "$PY" tools/rank_audit.py standalone "${archs[@]}" --seeds "$seed" --jobs "${JOBS:-1}" \
      --threads 1 --protocol standalone-inband-paired --cls-opts "$PAIRED_CLS" --det-opts "$PAIRED_DET" \
      --work-dir "$RUNS/standalone_inband-paired" --output "$out"
  done
}

# The claim's searches use DETNAS.SEARCH.SEED $SEARCH_SEED (default 0); another seed's folders and arch files
# carry _search<n>.
SEARCH_SEED=${SEARCH_SEED:-0}
search_tag=$([ "$SEARCH_SEED" = 0 ] || printf "_search%s" "$SEARCH_SEED")

# One search of the claim, run once (resumed if stopped), its best_arch.yaml copied to <arch file> and the
# latter added to `found`: search_arch <config> <search folder> <supernet> <arch file> [options...]
search_arch() {
  local config=$1 out=$2 weights=$3 arch=$4
  shift 4
  [ -f "$out/best_arch.yaml" ] || "$PY" search_net.py --config-file "$config" --resume OUTPUT_DIR "$out" \
    MODEL.WEIGHTS "$weights" DETNAS.SEARCH.SEED "$SEARCH_SEED" "$@"
  cp "$out/best_arch.yaml" "$arch"
  found+=("$arch")
}

case "${1:-}" in
  standalone)
    archs
    # Seed 0 of every arch first: a partial file already ranks all archs.
    for seeds in 0 "0 1"; do
      # shellcheck disable=SC2086
      "$PY" tools/rank_audit.py standalone --archs "$HERE/archs.txt" --seeds $seeds --jobs "${JOBS:-1}" --threads 1 \
        --work-dir "$RUNS/standalone" --output "$HERE/standalone.jsonl"
    done ;;
  recipes)
    archs
    shift
    [ $# -gt 0 ] || set -- a b c
    for r in "$@"; do recipe "$r"; done ;;
  compare)
    sup=()
    # the detection supernets, and each step-1 supernet's top-1 as a predictor of detection AP
    for f in "$HERE"/supernet_*.jsonl "$HERE"/step1_top1_*.jsonl; do [ -f "$f" ] && sup+=(--supernet "$f"); done
    # optional: another ground truth (e.g. reevaluate.py's) and its output folder
    "$PY" tools/rank_audit.py compare "${sup[@]}" --standalone "${2:-$HERE/standalone.jsonl}" --baseline recipe-a \
      --output-dir "${3:-$HERE}" ;;
  claim)
    shift
    claim "$@" ;;
  supernet-seeds)
    shift
    [ $# -gt 0 ] || set -- 0 1 2 3 4
    supernet_seeds "$@" ;;
  converged)
    shift
    [ $# -gt 0 ] || set -- 0 1
    pilot converged "" "" "$@" ;;
  converged-train1280)
    shift
    [ $# -gt 0 ] || set -- 0 1
    pilot converged-train1280 "" "DATASETS.TRAIN '(\"toy_det_train_large\",)'" "$@" ;;
  inband)
    # The in-band ground truth: 10 archs drawn one per FLOPs stratum inside the toy search's band (8.5-9.0M
    # backbone FLOPs at 128 px, configs/Toy/search_det.yaml), where FLOPs cannot rank them; the paired
    # protocol, seed by seed (every arch of a seed before the next seed: a partial file ranks all archs).
    shift
    [ $# -gt 0 ] || set -- 0 1 2 3 4
    [ -f "$HERE/archs_inband.txt" ] || "$PY" tools/rank_audit.py sample --num 10 --seed 1 \
      --output "$HERE/archs_inband.txt"
    for s in "$@"; do
      ARCHS=$HERE/archs_inband.txt pilot inband-paired "MODEL.DETNAS.PAIRED_INIT True" \
        "MODEL.DETNAS.PAIRED_INIT True" "$s"
    done ;;
  inband-supernets)
    # Recipe (a)'s supernet seeds (as supernet-seeds trains them, same folders) scoring the in-band archs:
    # the search's 64 images, 512 held-out images, step-1 top-1.
    shift
    [ $# -gt 0 ] || set -- 0 1 2 3 4
    mkdir -p "$HERE/inband"
    for s in "$@"; do
      dir=$RUNS/supernet_noise/seed$s
      ARCHS=$HERE/archs_inband.txt supernets a "$dir" "a-seed$s" "$HERE/inband/a_seed$s.jsonl" \
        "$HERE/inband/a_seed${s}_step1.jsonl" "SEED $s DETNAS.SAMPLER.SEED $s"
      "$PY" tools/rank_audit.py supernet --archs "$HERE/archs_inband.txt" --protocol "a-seed$s-eval512" \
        --output "$HERE/inband/a_seed${s}_eval512.jsonl" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth" \
        DETNAS.SEARCH.EVAL_DATASET toy_det_search_large
    done ;;
  protocols)
    # Scoring protocols on supernet seed $2 as inband-supernets trains it (these supernets are not those of
    # supernet_noise/, whose folders are gone: their scores stay apart), for the in-band archs (inband/a_seed*)
    # and the 13 study archs (inband/archs13_a_seed*): the shipped one and 512 evaluation images (as
    # inband-supernets scores the in-band archs), step-1 top-1, and cheaper ones: 16 recalibration images; a
    # 96 px shorter side; 16 recalibration + 32 evaluation images (under a tenth of the 512-image protocol's
    # forwards). protocol_table.py reads them.
    s=$2
    dir=$RUNS/supernet_noise/seed$s
    "$PY" tools/rank_audit.py supernet --config-file configs/Toy/search_cls.yaml --archs "$HERE/archs.txt" \
      --protocol "a-seed$s-step1" --output "$HERE/inband/archs13_a_seed${s}_step1.jsonl" \
      MODEL.WEIGHTS "$dir/cls_supernet/model_final.pth"
    for variant in "shipped:" "eval512:DETNAS.SEARCH.EVAL_DATASET toy_det_search_large" \
      "recalib16:DETNAS.BN_RECALIB.IMAGES 16" "res96:DETNAS.SEARCH.EVAL_MIN_SIZE 96" \
      "r16e32:DETNAS.BN_RECALIB.IMAGES 16 DETNAS.SEARCH.EVAL_IMAGES 32"; do
      name=${variant%%:*}
      label=a-seed$s-$name suffix=_$name
      [ "$name" != shipped ] || label=a-seed$s suffix=
      for set in "archs.txt:archs13_a_seed" "archs_inband.txt:a_seed"; do
        # shellcheck disable=SC2086
        "$PY" tools/rank_audit.py supernet --archs "$HERE/${set%%:*}" --protocol "$label" \
          --output "$HERE/inband/${set#*:}$s$suffix.jsonl" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth" \
          ${variant#*:}
      done
    done ;;
  protocols-extra)
    # The inputs of the table's search-procedure rows on supernet seed $2, which protocol_table.py simulates
    # with the search's own code: racing's first rung (SLICES (0.25,): the first 16 of the 64 evaluation
    # images, after the same BN recalibration) for both arch sets, and the shipped scores of 40 archs of the
    # band (archs_ridge.txt) that the ridge predictor is fitted on.
    s=$2
    dir=$RUNS/supernet_noise/seed$s
    [ -f "$HERE/archs_ridge.txt" ] || "$PY" tools/rank_audit.py sample --num 40 --seed 11 \
      --output "$HERE/archs_ridge.txt"
    for set in "archs.txt:archs13_a_seed" "archs_inband.txt:a_seed"; do
      "$PY" tools/rank_audit.py supernet --archs "$HERE/${set%%:*}" --protocol "a-seed$s-slice16" \
        --output "$HERE/inband/${set#*:}${s}_slice16.jsonl" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth" \
        DETNAS.SEARCH.EVAL_IMAGES 16
    done
    "$PY" tools/rank_audit.py supernet --archs "$HERE/archs_ridge.txt" --protocol "a-seed$s" \
      --output "$HERE/inband/ridge_a_seed$s.jsonl" MODEL.WEIGHTS "$dir/det_supernet/model_final.pth" ;;
  claim-inband-robust)
    # The claim at equal FLOPs for the search's robust options, on supernet seed $2 with seeds $2..$2+k-1 as
    # the k supernets (SUPERNETS=k, default 3): det-search with finalists (FINALISTS.TOPK 5 rescored on the k
    # supernets), the same choosing the fewest params among the finalists tied with the best
    # (FINALISTS.TIE_BREAK params), and every candidate scored by the mean of the k supernets
    # (ENSEMBLE_WEIGHTS); OPTIONS picks among finalists, tiebreak and ensemble (default: all three). Each
    # found arch retrained under the paired protocol with the given seeds (claim_inband.py compares them
    # with random archs; an arch retrained once serves every option and k).
    shift
    s=$1
    shift
    [ $# -gt 0 ] || set -- 0 1 2 3 4
    k=${SUPERNETS:-3}
    dir=$RUNS/supernet_noise/seed$s
    weights=$(for t in $(seq "$s" $((s + k - 1))); do printf "'%s'," "$RUNS/supernet_noise/seed$t/det_supernet/model_final.pth"; done)
    weights=${weights%,}  # a Python list literal without spaces: 'a','b','c'
    finalists="DETNAS.SEARCH.FINALISTS.TOPK 5 DETNAS.SEARCH.FINALISTS.WEIGHTS [$weights]"
    mkdir -p "$HERE/claim_inband"
    found=()
    for option in "finalists:$finalists" "tiebreak:$finalists DETNAS.SEARCH.FINALISTS.TIE_BREAK params" \
      "ensemble:DETNAS.SEARCH.ENSEMBLE_WEIGHTS [$weights]"; do
      case " ${OPTIONS:-finalists tiebreak ensemble} " in *" ${option%%:*} "*) ;; *) continue ;; esac
      name=${option%%:*}$k
      # shellcheck disable=SC2086
      search_arch configs/Toy/search_det.yaml "$dir/search_det_$name$search_tag" "$dir/det_supernet/model_final.pth" \
        "$HERE/claim_inband/det_search_${name}_supernet$s$search_tag.yaml" ${option#*:}
    done
    retrain_inband "$HERE/claim_inband/robust_supernet$s.jsonl" "${found[@]}" -- "$@" ;;
  claim-inband)
    # DetNAS's claim at equal FLOPs: supernet seed $2's detection and classification supernets (inband-supernets)
    # searched inside the band by the toy search configs (det-search, cls-search; KINDS="det" for the first
    # alone), each found arch retrained under the paired protocol with the given seeds. The random archs of
    # the band are the in-band ground truth's (same protocol, same seeds, same training folders):
    # claim_inband.py compares them.
    shift
    s=$1
    shift
    [ $# -gt 0 ] || set -- 0 1 2 3 4
    dir=$RUNS/supernet_noise/seed$s
    mkdir -p "$HERE/claim_inband"
    found=()
    for kind in ${KINDS:-det cls}; do
      search_arch "configs/Toy/search_$kind.yaml" "$dir/search_$kind$search_tag" "$dir/${kind}_supernet/model_final.pth" \
        "$HERE/claim_inband/${kind}_search_supernet$s$search_tag.yaml"
    done
    retrain_inband "$HERE/claim_inband/searched_supernet$s.jsonl" "${found[@]}" -- "$@" ;;
  paired)
    # The 6 pilot archs first, then the other 7 of archs.txt.
    shift
    [ $# -gt 0 ] || set -- 0 1
    for a in "$HERE/archs_pilot.txt" "$HERE/archs.txt"; do
      ARCHS=$a pilot paired "MODEL.DETNAS.PAIRED_INIT True" "MODEL.DETNAS.PAIRED_INIT True" "$@"
    done ;;
  *)
    sed -n '2,32p' "$0"; exit 2 ;;
esac
