#!/usr/bin/env bash
# Installs what the namespace guests of `vclq dev` and of the tests need — sshd,
# iptables, nft, ip, nsenter/unshare (openssh-server, iptables, nftables, iproute2,
# util-linux) — with apt-get when missing, idempotently. Namespace guests need root:
# without root, or when the packages cannot be installed, it says so and what it would
# install, and exits 0: `vclq dev` then runs simulated guests (and says so), the
# guest-lab tests skip.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
need=()
have sshd || need+=(openssh-server)
have ssh-keygen || need+=(openssh-client)
have iptables || need+=(iptables)
have nft || need+=(nftables)
have ip || need+=(iproute2)
{ have nsenter && have unshare; } || need+=(util-linux)

if [ "$(id -u)" != 0 ]; then
	if [ ${#need[@]} -gt 0 ]; then
		echo "guest-deps: not root: would install ${need[*]} (sudo make run installs them)"
	fi
	echo "guest-deps: not root: namespace guests need root, so vclq dev runs simulated guests"
	exit 0
fi
if [ ${#need[@]} -eq 0 ]; then
	echo "guest-deps: ok (sshd, iptables, nft, ip, nsenter present)"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "guest-deps: no apt-get: install ${need[*]} yourself; until then vclq dev runs simulated guests"
	exit 0
fi
echo "guest-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
	echo "guest-deps: apt-get could not install ${need[*]}; vclq dev runs simulated guests"
	exit 0
fi
echo "guest-deps: ok"
