# Sourced by postfix-sink.sh and postfix-relay.sh: a Postfix instance of its own (config, queue
# and data directories apart from the system's), its master.cf without the system's port-25
# listener and with chroot off (there is no syslog in a chroot here, nor CAP_SYS_CHROOT in a
# container).
instance_prepare() {  # NAME: creates the directories and master.cf; sets config and spool
  config=/etc/$1
  spool=/var/spool/$1
  mkdir -p "$config" "$spool" "/var/lib/$1"
  chmod 0755 "$spool"  # an emptyDir or tmpfs is made writable by all
  cp /etc/postfix/master.cf "$config/master.cf"
  sed -i -E '/^smtp +inet /d' "$config/master.cf"
  # No chroot for any daemon (the fifth column): a container keeps no CAP_SYS_CHROOT.
  awk '/^[a-z0-9]/ && NF >= 8 { $5 = "n" } { print }' "$config/master.cf" >"$config/master.cf.new"
  mv "$config/master.cf.new" "$config/master.cf"
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

instance_stop() {  # NAME: stops it and removes what instance_prepare and its run made, so no
  # state outlives it on the host (a pod's emptyDirs are only emptied)
  local master
  master=$(cat "$spool/pid/master.pid" 2>/dev/null || true)
  postfix -c "$config" stop >/dev/null 2>&1 || true
  for _ in $(seq 50); do
    [ -n "$master" ] && kill -0 "$master" 2>/dev/null || break
    sleep 0.1
  done
  rm -rf "$config" "$spool" "/var/lib/$1" "/var/log/$1.log" 2>/dev/null || true
}
