# shellcheck shell=sh
# Sourced by the VM suites: vm_watchdog PID NAME &
# When the kernel reports tasks blocked on I/O, records where every thread of the Node processes
# is and what memory looks like (in $results/NAME-hang.txt), then kills PID and its children so
# the suite ends with a diagnosis instead of waiting for the VM timeout.
vm_watchdog() { # PID NAME
  echo 60 >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
  while sleep 10; do
    dmesg | grep -qE 'blocked (in I/O wait )?for more than' || continue
    {
      echo "== hung I/O detected at $(cut -d' ' -f1 /proc/uptime)s"
      grep -E '^(MemFree|Dirty|Writeback|Cached|Shmem):' /proc/meminfo
      for p in $(pgrep -x node); do
        echo "== node pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline")"
        for t in /proc/"$p"/task/*; do
          echo "-- tid ${t##*/} $(cat "$t/comm") state=$(awk '{ print $3 }' "$t/stat") wchan=$(cat "$t/wchan" 2>/dev/null)"
          cat "$t/stack" 2>/dev/null
        done
      done
      echo "== D-state tasks"
      ps -eo pid,stat,comm,wchan 2>/dev/null | awk '$2 ~ /D/'
    } >"${PLOOP_CSI_VM_RESULTS:-/tmp}/$2-hang.txt" 2>&1
    echo w >/proc/sysrq-trigger 2>/dev/null
    sleep 5
    echo "[$2] hung I/O: diagnostics in $2-hang.txt; ending the run"
    pkill -KILL -P "$1" 2>/dev/null
    kill -KILL "$1" 2>/dev/null
    return
  done
}
