#!/usr/bin/env bash
# A Postfix instance of its own that offers STARTTLS on a loopback port and discards all mail:
# the real MTA tlsstorm's receiver is compared with. Needs Debian's postfix package, and root.
#   scripts/postfix-sink.sh start PORT CERT KEY    (prints the instance's config directory)
#   scripts/postfix-sink.sh run PORT CERT KEY      (in the foreground until SIGTERM: a target
#                                                   the local stack starts and stops)
#   scripts/postfix-sink.sh stop
# TLSSTORM_POSTFIX_NAME names the instance (default tlsstorm-postfix): its config is
# /etc/NAME, its queue /var/spool/NAME, its master's pid in /var/spool/NAME/pid/master.pid.
# TLSSTORM_POSTFIX_MAX_USE: connections an smtpd serves before it exits and master starts
# another (default: a million, so they live through a run; Postfix's own default is 100).
# TLSSTORM_POSTFIX_INTERFACES: loopback-only (default) or all (in a pod).
set -euo pipefail
source "$(dirname "$0")/postfix-instance.sh"
name=${TLSSTORM_POSTFIX_NAME:-tlsstorm-postfix}
interfaces=${TLSSTORM_POSTFIX_INTERFACES:-loopback-only}
config=/etc/$name
configure() {  # PORT CERT KEY
    port=$1 cert=$2 key=$3
    instance_prepare $name
    install -m 0644 "$cert" "$config/cert.pem"
    install -m 0600 "$key" "$config/key.pem"
    # Only our listener: a loopback port (or every address: TLSSTORM_POSTFIX_INTERFACES=all).
    if [ "$interfaces" = loopback-only ]; then listener=127.0.0.1:$port; else listener=$port; fi
    echo "$listener inet n - n - - smtpd" >>"$config/master.cf"
    cat >"$config/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $spool
data_directory = /var/lib/$name
myhostname = postfix.tlsstorm.test
mydestination =
# No local delivery: no aliases to look up.
alias_maps =
alias_database =
inet_interfaces = $interfaces
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Accept everything and throw it away: a sink, like tlsstorm's receiver (nothing is ever
# delivered, so a client from any network may send; in a pod the senders are not loopback).
smtpd_relay_restrictions = check_client_access static:DISCARD
smtpd_recipient_restrictions = check_client_access static:DISCARD, permit_mynetworks, reject
smtpd_tls_cert_file = $config/cert.pem
smtpd_tls_key_file = $config/key.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 0
maillog_file = /var/log/$name.log
# Mail is taken as fast as it comes: without this, smtpd pauses a second before each message
# whenever mail arrives faster than qmgr hands it on (flow control for a real queue).
in_flow_delay = 0
# smtpd processes live through a run, so their CPU can be read from /proc.
max_use = ${TLSSTORM_POSTFIX_MAX_USE:-1000000}
max_idle = 3600s
default_process_limit = 600
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
CONF
}
case "${1:-}" in
  start)
    configure "$2" "$3" "$4"
    instance_start $name
    ;;
  run)
    configure "$2" "$3" "$4"
    instance_start $name >/dev/null
    # Until SIGTERM (or Ctrl-C), or until the master dies; then the instance is stopped.
    trap 'instance_stop $name; exit 0' TERM INT
    master=$(cat "$spool/pid/master.pid")
    while kill -0 $master 2>/dev/null; do sleep 0.5 & wait $!; done
    echo "postfix-sink: the master ($master) of $name has exited" >&2
    instance_stop $name
    exit 1
    ;;
  stop)
    spool=/var/spool/$name
    instance_stop $name
    ;;
  *)
    echo "usage: $0 start PORT CERT KEY | run PORT CERT KEY | stop" >&2
    exit 2
    ;;
esac
