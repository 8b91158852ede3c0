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
# the native id, for finding this submission where the scheduler forgets ended jobs
printf '%s\n' "$JOBBRIDGE_JOB_ID" >> "$jobbridge_exit_file.id"
jobbridge_record() {
    printf '%s %s %s\n' "$1" "$jobbridge_started" "$(date +%s)" > "$2.tmp"
    mv -f "$2.tmp" "$2"
}
jobbridge_exit() {
    jobbridge_record "$1" "$jobbridge_exit_file"
    if [ "$1" -eq 0 ]; then exit 0; fi
    exit 100
}
# a scheduler ends a job (walltime, cancellation) with TERM, and KILL a little later: noted
# apart from the exit code, so that the scheduler's own word on the end still comes first
trap 'jobbridge_record 143 "$jobbridge_exit_file.term"; exit 143' TERM
cd '/scratch/jobbridge jobs/jb0case0plai' || jobbridge_exit 127
echo hello > '/scratch/jobbridge jobs/jb0case0plai/stdout' 2> '/scratch/jobbridge jobs/jb0case0plai/stderr'
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
