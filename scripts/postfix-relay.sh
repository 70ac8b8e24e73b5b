#!/usr/bin/env bash
# A Postfix instance of its own that relays every message it is given, over STARTTLS (required),
# to a loopback port: a real MTA as a legitimate TLS client of tlsstorm's receiver. Needs
# Debian's postfix package, and root.
#   scripts/postfix-relay.sh start PORT   (prints the instance's config directory)
#   scripts/postfix-relay.sh send FROM TO (a message into its queue, relayed at once)
#   scripts/postfix-relay.sh stop
set -euo pipefail
name=tlsstorm-postfix-relay
config=/etc/$name
spool=/var/spool/$name
case "${1:-}" in
  start)
    port=$2
    mkdir -p "$config" "$spool" /var/lib/$name
    cp /etc/postfix/master.cf "$config/master.cf"
    # No listener at all (mail comes in by sendmail); chroot off (no syslog in a chroot here).
    sed -i -E '/^smtp +inet /d' "$config/master.cf"
    sed -i -E 's/^(postlog +unix-dgram +n +- +)[ny]/\1n/' "$config/master.cf"
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
    chown postfix:postfix /var/lib/$name
    postfix -c "$config" set-permissions >/dev/null 2>&1 || true
    postfix -c "$config" check
    postfix -c "$config" start >/dev/null 2>&1 || postfix -c "$config" reload >/dev/null
    echo "$config"
    ;;
  send)
    printf 'Subject: relayed by Postfix\r\n\r\nlegitimate mail over TLS\r\n' |
      sendmail -C "$config" -f "$2" "$3"
    postqueue -c "$config" -f
    ;;
  stop)
    postfix -c "$config" stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start PORT | send FROM TO | stop" >&2
    exit 2
    ;;
esac
