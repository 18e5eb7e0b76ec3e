#!/usr/bin/env bash
# Installs, from Debian's packages, the external tools that the test suite drives for real:
#   dig (bind9-dnsutils)   DNS tests ask the embedded server over UDP and TCP
#   promtool (prometheus)  /metrics output must pass `promtool check metrics` (SPEC §7)
#   ip (iproute2), curl    e2e tests and the README's examples
#   jq, git                e2e first-run test (copies the tracked files; the README walkthrough uses jq)
#   prlimit (util-linux)   e2e overload test runs the gateway under a small open-file limit
#   haproxy, nginx + stream module, dnsmasq (dnsmasq-base)
#                          test/bench/harness.test.ts checks the bench's configs with the real tools
#   etcd, etcdctl (etcd-server, etcd-client), arping (iputils-arping)
#                          cluster tests and `npm run lab` (SPEC §12): etcd members in namespaces,
#                          gratuitous ARP for owned endpoint IPs
# With --bench it also installs the load generators of bench/ (iperf3, wrk, dnsperf).
#
# Behaviour (called by `npm test`'s pretest and by bench/run.ts):
#   - every tool present: one line, exit 0, no apt call;
#   - something missing, root with apt-get: `apt-get update` once, then one
#     `apt-get install --no-install-recommends` of the missing packages, quietly;
#   - something missing and no way to install it: a notice naming the tests that will skip,
#     exit 0 -- except under CI=true, where a missing tool is a failure (exit 1).
# Services: packages such as prometheus, nginx and haproxy start a daemon on install (prometheus
# on :9090). A policy-rc.d that answers 101 stops that for the duration of the install (it is
# only added when the machine has none), and on a systemd host the units of packages installed
# here are stopped and disabled afterwards, so nothing is left listening.
set -euo pipefail

want_bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) want_bench=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install-test-tools: unknown option $arg (known: --bench)" >&2; exit 2 ;;
  esac
done

# tool | Debian package | path that proves it is there (a command name or an absolute file)
checks=(
  "dig|bind9-dnsutils|dig"
  "promtool|prometheus|promtool"
  "ip|iproute2|ip"
  "curl|curl|curl"
  "jq|jq|jq"
  "git|git|git"
  "haproxy|haproxy|haproxy"
  "nginx|nginx|nginx"
  "nginx stream module|libnginx-mod-stream|/usr/lib/nginx/modules/ngx_stream_module.so"
  "dnsmasq|dnsmasq-base|dnsmasq"
  "prlimit|util-linux|prlimit"
  "etcd|etcd-server|etcd"
  "etcdctl|etcd-client|etcdctl"
  "arping (iputils)|iputils-arping|/usr/bin/arping"
)
if [[ $want_bench == 1 ]]; then
  checks+=("iperf3|iperf3|iperf3" "wrk|wrk|wrk" "dnsperf|dnsperf|dnsperf")
fi

# Daemons that their packages may start; stopped/disabled only if this run installed them.
# etcd-server's etcd would listen on 127.0.0.1:2379; the cluster tests start their own members.
declare -A services=([prometheus]=prometheus [nginx]=nginx [haproxy]=haproxy [iperf3]=iperf3 [etcd-server]=etcd)

have () {
  local probe=$1
  if [[ $probe == /* ]]; then [[ -e $probe ]]; return; fi
  command -v "$probe" >/dev/null 2>&1 && return 0
  # haproxy, nginx and dnsmasq live in sbin, which a non-root PATH may lack.
  [[ -x /usr/sbin/$probe || -x /sbin/$probe ]]
}

missing_tools=()
missing_pkgs=()
for entry in "${checks[@]}"; do
  IFS='|' read -r tool pkg probe <<<"$entry"
  if ! have "$probe"; then
    missing_tools+=("$tool")
    [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  fi
done

if [[ ${#missing_tools[@]} -eq 0 ]]; then
  echo "install-test-tools: all ${#checks[@]} tools present"
  exit 0
fi

notice () {
  echo "install-test-tools: NOT INSTALLED: ${missing_tools[*]} (Debian packages: ${missing_pkgs[*]})" >&2
  echo "install-test-tools: $1" >&2
  echo "install-test-tools: tests that need these tools will SKIP with a reason (under CI=true they fail)." >&2
  echo "install-test-tools: to install them: sudo apt-get install --no-install-recommends ${missing_pkgs[*]}" >&2
  if [[ ${CI:-} == true ]]; then exit 1; fi
  exit 0
}

if [[ $(id -u) -ne 0 ]]; then notice "not root, so nothing was installed."; fi
if ! command -v apt-get >/dev/null 2>&1; then notice "no apt-get on this machine, so nothing was installed."; fi

log=$(mktemp -t install-test-tools.XXXXXX)
policy=/usr/sbin/policy-rc.d
added_policy=0
cleanup () {
  if [[ $added_policy == 1 ]]; then rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# added by linkgate scripts/install-test-tools.sh for one install: start no daemon\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
echo "install-test-tools: installing ${missing_pkgs[*]} (for ${missing_tools[*]})"
if ! apt-get "${apt_opts[@]}" update >"$log" 2>&1 \
  || ! apt-get "${apt_opts[@]}" install --no-install-recommends "${missing_pkgs[@]}" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  notice "apt-get failed (output above)."
fi

# A systemd host ignores none of policy-rc.d's answers at install time, but the unit stays
# enabled for the next boot: disable what this run installed.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  for pkg in "${missing_pkgs[@]}"; do
    unit=${services[$pkg]-}
    if [[ -n $unit ]]; then systemctl disable --now "$unit" >/dev/null 2>&1 || true; fi
  done
else
  # Without systemd, a machine's own policy-rc.d (kept as it is) may have let a SysV script
  # start the daemon: stop it through its own script and keep it from starting at boot.
  for pkg in "${missing_pkgs[@]}"; do
    unit=${services[$pkg]-}
    if [[ -n $unit && -x /etc/init.d/$unit ]]; then
      "/etc/init.d/$unit" stop >/dev/null 2>&1 || true
      if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$unit" disable >/dev/null 2>&1 || true; fi
    fi
  done
fi

still=()
for entry in "${checks[@]}"; do
  IFS='|' read -r tool pkg probe <<<"$entry"
  have "$probe" || still+=("$tool")
done
if [[ ${#still[@]} -gt 0 ]]; then
  missing_tools=("${still[@]}")
  notice "installed, but still not found: ${still[*]}."
fi
echo "install-test-tools: installed ${missing_pkgs[*]}; all ${#checks[@]} tools present"
