#!/bin/bash
#BSUB -J "work.jb-jb0array0000[1-10]%3"
#BSUB -o lsf-%J_%I.out
#BSUB -e lsf-%J_%I.err
#BSUB -n 1
#BSUB -R "span[hosts=1]"
# jobbridge job jb0array0000 (lsf)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="${LSB_JOBID}[${LSB_JOBINDEX}]"
export JOBBRIDGE_SUBMIT_HOST="$LSB_SUB_HOST"
export JOBBRIDGE_NODELIST="$(set -- $LSB_MCPU_HOSTS; hosts=; while [ $# -ge 2 ]; do hosts="${hosts:+$hosts,}$1"; shift 2; done; printf %s "$hosts")"
export JOBBRIDGE_ARRAY_INDEX="$((LSB_JOBINDEX - 1))"
export JOBBRIDGE_JOB_NAME=work
export JOBBRIDGE_WORKDIR='/scratch/jobbridge jobs/jb0array0000'
jobbridge_exit_file='/scratch/jobbridge jobs/jb0array0000'/exitcode."$JOBBRIDGE_ARRAY_INDEX"
jobbridge_started=$(date +%s)
# the native id, for finding this submission where the scheduler forgets ended jobs
printf '%s\n' "$JOBBRIDGE_JOB_ID" >> "$jobbridge_exit_file.id"
jobbridge_record() {
    printf '%s %s %s\n' "$1" "$jobbridge_started" "$(date +%s)" > "$2.tmp"
    mv -f "$2.tmp" "$2"
}
jobbridge_exit() {
    jobbridge_record "$1" "$jobbridge_exit_file"
    exit "$1"
}
# a scheduler ends a job (walltime, cancellation) with TERM, and KILL a little later: noted
# apart from the exit code, so that the scheduler's own word on the end still comes first
trap 'jobbridge_record 143 "$jobbridge_exit_file.term"; exit 143' TERM
cd '/scratch/jobbridge jobs/jb0array0000' || jobbridge_exit 127
work --part > '/scratch/jobbridge jobs/jb0array0000/stdout'."$JOBBRIDGE_ARRAY_INDEX" 2> '/scratch/jobbridge jobs/jb0array0000/stderr'."$JOBBRIDGE_ARRAY_INDEX"
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
