# Sourced by postfix-sink.sh and postfix-relay.sh: a Postfix instance of its own (config, queue
# and data directories apart from the system's), its master.cf without the system's port-25
# listener and with chroot off (there is no syslog in a chroot here).
instance_prepare() {  # NAME: creates the directories and master.cf; sets config and spool
  config=/etc/$1
  spool=/var/spool/$1
  mkdir -p "$config" "$spool" "/var/lib/$1"
  cp /etc/postfix/master.cf "$config/master.cf"
  sed -i -E '/^smtp +inet /d' "$config/master.cf"
  sed -i -E 's/^(postlog +unix-dgram +n +- +)[ny]/\1n/' "$config/master.cf"
}

instance_check() {  # NAME, once main.cf is written: ownership and Postfix's own check
  chown postfix:postfix "/var/lib/$1"
  postfix -c "$config" set-permissions >/dev/null 2>&1 || true
  postfix -c "$config" check
}

instance_start() {  # NAME, once main.cf is written: checks, starts (or reloads), prints config
  instance_check "$1"
  postfix -c "$config" start >/dev/null 2>&1 || postfix -c "$config" reload >/dev/null
  echo "$config"
}
