#!/usr/bin/env bash
# A Postfix instance of its own that relays every message it is given, over STARTTLS (required),
# to a loopback port: a real MTA as a legitimate TLS client of tlsstorm's receiver. Needs
# Debian's postfix package, and root.
#   scripts/postfix-relay.sh start PORT   (prints the instance's config directory)
#   scripts/postfix-relay.sh send FROM TO (a message into its queue, relayed at once)
#   scripts/postfix-relay.sh stop
set -euo pipefail
source "$(dirname "$0")/postfix-instance.sh"
name=tlsstorm-postfix-relay
config=/etc/$name
case "${1:-}" in
  start)
    port=$2
    instance_prepare $name  # no listener at all: mail comes in by sendmail
    sed -i -E 's/^(smtp +unix +- +- +)[ny]/\1n/' "$config/master.cf"
    cat >"$config/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $spool
data_directory = /var/lib/$name
myhostname = relay.tlsstorm.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [127.0.0.1]:$port
# TLS or nothing, as a careful MTA relaying to a known peer: not verified (a test root).
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
maillog_file = /var/log/$name.log
CONF
    instance_start $name
    ;;
  send)
    printf 'Subject: relayed by Postfix\r\n\r\nlegitimate mail over TLS\r\n' |
      sendmail -C "$config" -f "$2" "$3"
    postqueue -c "$config" -f
    ;;
  stop)
    spool=/var/spool/$name
    instance_stop $name
    ;;
  *)
    echo "usage: $0 start PORT | send FROM TO | stop" >&2
    exit 2
    ;;
esac
