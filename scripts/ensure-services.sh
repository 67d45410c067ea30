#!/usr/bin/env bash
# Makes sure MariaDB, Redis and Mosquitto answer on loopback before the tests
# run, starting (or, as root on a bare machine, installing) whichever is down.
# The start commands are the ones this kind of machine uses at boot.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        port_open "$port" && return 0
        sleep 0.1
    done
    echo "ensure-services: $name is not answering on 127.0.0.1:$port" >&2
    return 1
}

apt_updated=0
apt_install() {
    [ "$(id -u)" = 0 ] || { echo "ensure-services: not root, cannot install $*" >&2; return 1; }
    if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! port_open 3306; then
    installed_now=0
    if [ ! -x /usr/sbin/mariadbd ]; then
        apt_install mariadb-server || exit 1
        installed_now=1
    fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB || exit 1
    if [ $installed_now = 1 ]; then
        # Debian's root logs in through the unix socket only; the tests log
        # in over TCP with an empty password, as this kind of machine does.
        mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('')" \
            || echo "ensure-services: could not open root to TCP logins" >&2
    fi
    mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test" 2>/dev/null || true
fi

if ! port_open 6379; then
    command -v redis-server >/dev/null || apt_install redis-server || exit 1
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379 Redis || exit 1
fi

if ! port_open 1883; then
    command -v mosquitto >/dev/null || apt_install mosquitto || exit 1
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    wait_port 1883 Mosquitto || exit 1
fi

# promtool lints our /metrics output in a test; Debian's prometheus brings it.
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ]; then
    apt_install prometheus || echo "ensure-services: promtool unavailable; its test will skip" >&2
fi
# nginx checks the shipped ack-page snippet in a test.
if ! command -v nginx >/dev/null && [ "$(id -u)" = 0 ]; then
    apt_install nginx-light || echo "ensure-services: nginx unavailable; its test will skip" >&2
fi
exit 0
