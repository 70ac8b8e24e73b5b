#!/usr/bin/env bash
# A Postfix instance of its own that offers STARTTLS on a loopback port and discards all mail:
# the real MTA tlsstorm's receiver is compared with. Needs Debian's postfix package, and root.
#   scripts/postfix-sink.sh start PORT CERT KEY    (prints the instance's config directory)
#   scripts/postfix-sink.sh stop
set -euo pipefail
source "$(dirname "$0")/postfix-instance.sh"
name=tlsstorm-postfix
config=/etc/$name
case "${1:-}" in
  start)
    port=$2 cert=$3 key=$4
    instance_prepare $name
    install -m 0644 "$cert" "$config/cert.pem"
    install -m 0600 "$key" "$config/key.pem"
    # Only our listener: a loopback port.
    echo "127.0.0.1:$port inet n - n - - smtpd" >>"$config/master.cf"
    cat >"$config/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $spool
data_directory = /var/lib/$name
myhostname = postfix.tlsstorm.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Accept everything from loopback and throw it away: a sink, like tlsstorm's receiver.
smtpd_recipient_restrictions = check_client_access static:DISCARD, permit_mynetworks, reject
smtpd_tls_cert_file = $config/cert.pem
smtpd_tls_key_file = $config/key.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 0
maillog_file = /var/log/$name.log
# smtpd processes live through a run, so their CPU can be read from /proc.
max_use = 1000000
max_idle = 3600s
default_process_limit = 600
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
CONF
    instance_start $name
    ;;
  stop)
    postfix -c "$config" stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start PORT CERT KEY | stop" >&2
    exit 2
    ;;
esac
