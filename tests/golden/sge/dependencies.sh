#!/bin/bash
#$ -N echo.jb-jb0case0plai
#$ -o sge-$JOB_ID.out
#$ -e sge-$JOB_ID.err
#$ -S /bin/bash
#$ -cwd
#$ -V
#$ -hold_jid 1001,1002
# jobbridge job jb0case0plai (sge)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$JOB_ID"
export JOBBRIDGE_SUBMIT_HOST="$SGE_O_HOST"
export JOBBRIDGE_NODELIST="$(if [ -r "${PE_HOSTFILE:-}" ]; then cut -d ' ' -f 1 "$PE_HOSTFILE" | paste -s -d , -; else echo "$HOSTNAME"; fi)"
export JOBBRIDGE_JOB_NAME=echo
export JOBBRIDGE_WORKDIR='/scratch/jobbridge jobs/jb0case0plai'
jobbridge_exit_file='/scratch/jobbridge jobs/jb0case0plai'/exitcode
jobbridge_started=$(date +%s)
jobbridge_exit() {
    printf '%s %s %s\n' "$1" "$jobbridge_started" "$(date +%s)" > "$jobbridge_exit_file.tmp"
    mv -f "$jobbridge_exit_file.tmp" "$jobbridge_exit_file"
    if [ "$1" -eq 0 ]; then exit 0; fi
    exit 100
}
cd '/scratch/jobbridge jobs/jb0case0plai' || jobbridge_exit 127
echo hello > '/scratch/jobbridge jobs/jb0case0plai/stdout' 2> '/scratch/jobbridge jobs/jb0case0plai/stderr'
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
