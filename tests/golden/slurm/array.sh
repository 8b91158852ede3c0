#!/bin/bash
#SBATCH --job-name=work.jb-jb0array0000
#SBATCH --output=slurm-%A_%a.out
#SBATCH --error=slurm-%A_%a.err
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --export=ALL
#SBATCH --array=0-9%3
# jobbridge job jb0array0000 (slurm)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$SLURM_JOB_ID"
export JOBBRIDGE_SUBMIT_HOST="$SLURM_SUBMIT_HOST"
export JOBBRIDGE_NODELIST="$SLURM_JOB_NODELIST"
export JOBBRIDGE_ARRAY_INDEX="$SLURM_ARRAY_TASK_ID"
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
