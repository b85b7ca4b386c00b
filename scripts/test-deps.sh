#!/usr/bin/env bash
# Installs and starts what `make test` needs, idempotently:
#   - Debian packages for the guest lab (scripts/guest-deps.sh: openssh-server,
#     iptables, nftables, iproute2, util-linux) and MariaDB, with apt-get when missing
#     (only as root; otherwise those tests skip);
#   - a running MariaDB on 127.0.0.1:3306 (root, no password);
#   - natscli (the real `nats` CLI), pinned, for replay tests.
set -euo pipefail

NATSCLI_VERSION=v0.5.1
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

bash "$(dirname "$0")/guest-deps.sh"
if [ "$(id -u)" = 0 ]; then
	have mariadbd || have mysqld || need+=(mariadb-server)
	have mariadb || have mysql || need+=(mariadb-client)
	if [ ${#need[@]} -gt 0 ]; then
		echo "test-deps: installing ${need[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
	# MariaDB: start it if it is down.
	if ! mariadb-admin -uroot --connect-timeout=2 ping >/dev/null 2>&1; then
		echo "test-deps: starting MariaDB"
		mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
		if [ ! -d /var/lib/mysql/mysql ]; then
			mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
		fi
		start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
		for _ in $(seq 1 60); do
			mariadb-admin -uroot --connect-timeout=1 ping >/dev/null 2>&1 && break
			sleep 0.5
		done
		mariadb-admin -uroot --connect-timeout=2 ping >/dev/null || { echo "test-deps: MariaDB did not start" >&2; exit 1; }
	fi
else
	echo "test-deps: not root: guest-lab and MariaDB tests will skip unless already available"
fi

gobin=$(go env GOPATH)/bin
if ! "$gobin/nats" --version 2>/dev/null | grep -q "${NATSCLI_VERSION#v}"; then
	echo "test-deps: installing natscli $NATSCLI_VERSION"
	GOFLAGS= go install "github.com/nats-io/natscli/nats@${NATSCLI_VERSION}"
fi
echo "test-deps: ok"
