#!/bin/bash
#PBS -N echo.jb-jb0case0plai
#PBS -S /bin/bash
#PBS -o pbs.out
#PBS -e pbs.err
#PBS -l nodes=1:ppn=1
#PBS -W depend=afterok:1001,afterany:1002
#PBS -V
# jobbridge job jb0case0plai (torque)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$PBS_JOBID"
export JOBBRIDGE_SUBMIT_HOST="$PBS_O_HOST"
export JOBBRIDGE_NODELIST="$(awk '!seen[$0]++' "${PBS_NODEFILE:-/dev/null}" | paste -sd, -)"
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
    exit "$1"
}
# a scheduler ends a job (walltime, cancellation) with TERM, and KILL a little later: noted
# apart from the exit code, so that the scheduler's own word on the end still comes first
trap 'jobbridge_record 143 "$jobbridge_exit_file.term"; exit 143' TERM
cd '/scratch/jobbridge jobs/jb0case0plai' || jobbridge_exit 127
echo hello > '/scratch/jobbridge jobs/jb0case0plai/stdout' 2> '/scratch/jobbridge jobs/jb0case0plai/stderr'
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
