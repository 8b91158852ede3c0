#!/bin/bash
#$ -N work.jb-jb0array0000
#$ -o sge-$JOB_ID.$TASK_ID.out
#$ -e sge-$JOB_ID.$TASK_ID.err
#$ -S /bin/bash
#$ -cwd
#$ -V
#$ -t 1-10:1
#$ -tc 3
# jobbridge job jb0array0000 (sge)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$JOB_ID.$SGE_TASK_ID"
export JOBBRIDGE_SUBMIT_HOST="$SGE_O_HOST"
export JOBBRIDGE_NODELIST="$(if [ -r "${PE_HOSTFILE:-}" ]; then cut -d ' ' -f 1 "$PE_HOSTFILE" | paste -s -d , -; else echo "$HOSTNAME"; fi)"
export JOBBRIDGE_ARRAY_INDEX="$((SGE_TASK_ID - 1))"
export JOBBRIDGE_JOB_NAME=work
export JOBBRIDGE_WORKDIR='/scratch/jobbridge jobs/jb0array0000'
jobbridge_exit_file='/scratch/jobbridge jobs/jb0array0000'/exitcode."$JOBBRIDGE_ARRAY_INDEX"
jobbridge_started=$(date +%s)
jobbridge_exit() {
    printf '%s %s %s\n' "$1" "$jobbridge_started" "$(date +%s)" > "$jobbridge_exit_file.tmp"
    mv -f "$jobbridge_exit_file.tmp" "$jobbridge_exit_file"
    if [ "$1" -eq 0 ]; then exit 0; fi
    exit 100
}
cd '/scratch/jobbridge jobs/jb0array0000' || jobbridge_exit 127
work --part > '/scratch/jobbridge jobs/jb0array0000/stdout'."$JOBBRIDGE_ARRAY_INDEX" 2> '/scratch/jobbridge jobs/jb0array0000/stderr'."$JOBBRIDGE_ARRAY_INDEX"
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
