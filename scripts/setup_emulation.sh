#!/usr/bin/env bash
# Emulation prerequisites (called by `scripts/setup.sh --emulation`; also runnable alone).
# Idempotent and fast when already done: installs the Debian packages only when a command is
# missing, starts Open vSwitch only when ovsdb/ovs-vswitchd do not answer. Works without systemd
# (CI: fresh Debian 12 container as root), using the ovs-ctl script shipped by openvswitch-switch.
set -euo pipefail

log() { echo "[setup-emulation] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup_emulation.sh: must run as root: it installs Debian packages (mininet, openvswitch-switch," \
       "iperf3, ethtool, tcpdump, iproute2, psmisc, iputils-ping, openssh-server) and starts the Open vSwitch daemons." \
       "Run: sudo $0" >&2
  exit 1
fi

# package -> a file it installs (presence check without dpkg-query per package being slow)
declare -A probe=(
  [mininet]=/usr/bin/mnexec
  [openvswitch-switch]=/usr/sbin/ovs-vswitchd
  [iperf3]=/usr/bin/iperf3
  [ethtool]=/usr/sbin/ethtool
  [tcpdump]=/usr/bin/tcpdump
  [iproute2]=/usr/sbin/tc
  [psmisc]=/usr/bin/killall
  [iputils-ping]=/usr/bin/ping
  [prometheus]=/usr/bin/prometheus
  [openssh-server]=/usr/sbin/sshd
)
missing=()
for pkg in mininet openvswitch-switch iperf3 ethtool tcpdump iproute2 psmisc iputils-ping prometheus openssh-server; do
  [ -e "${probe[$pkg]}" ] || missing+=("$pkg")
done
# Debian's Mininet lives in /usr/bin/python3's dist-packages; the venv sees it via system site packages.
if [ -e /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import mininet.net' 2>/dev/null; then
  case " ${missing[*]:-} " in *" mininet "*) ;; *) missing+=(mininet) ;; esac
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # --no-install-recommends keeps the install small; iperf3's debconf question is pre-answered.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # openssh-server is for the cluster-mode test, which runs its own sshd on loopback with its own
  # config and keys; the system's ssh service it installs is not wanted: stopped and disabled.
  case " ${missing[*]} " in
    *" openssh-server "*)
      if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now ssh.service >/dev/null 2>&1 || true
      fi ;;
  esac
else
  log "Debian packages already installed"
fi

if ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
  log "Open vSwitch already running"
else
  log "starting Open vSwitch (ovs-ctl start)"
  # ovs-ctl skips modprobe when the kernel has no module support; the ulimit warning it prints
  # in containers is harmless.
  /usr/share/openvswitch/scripts/ovs-ctl start >&2 || true
  for _ in $(seq 1 50); do
    ovs-vsctl --timeout=5 show >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
    echo "setup_emulation.sh: Open vSwitch did not start; see /var/log/openvswitch/*.log" >&2
    exit 1
  fi
fi

if [ -d /sys/module/openvswitch ] || modprobe -n openvswitch >/dev/null 2>&1; then
  log "kernel has the openvswitch module: the fabric will use the kernel datapath"
else
  log "no openvswitch kernel module: the fabric will use the userspace datapath (netdev)"
fi
log "emulation prerequisites ready"
