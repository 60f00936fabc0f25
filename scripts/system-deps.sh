#!/usr/bin/env bash
# System packages that the reference-exact metrics and some tests need (Debian names):
#   default-jre-headless            pycocoevalcap's PTB tokeniser and METEOR 1.5 (Java)
#   wordnet-base wordnet-sense-index  NLTK METEOR's WordNet, built offline by medvl.eval.wordnet
#   chromium                        the web demo's browser test (driven by playwright; no browser download)
# Installed only when missing and when we may (root + apt-get); otherwise the tests that need them
# skip with the reason, and medvl names the missing package at run time.
set -uo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || need+=(wordnet-sense-index)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        || echo "warning: could not install ${need[*]}; the tests that need them will be skipped"
else
    echo "note: missing system packages ${need[*]} (apt-get install ${need[*]}); dependent tests will be skipped"
fi
exit 0
