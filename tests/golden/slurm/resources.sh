#!/bin/bash
#SBATCH --job-name=mpi_run.jb-jb0case0reso
#SBATCH --output=slurm-%j.out
#SBATCH --error=slurm-%j.err
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --export=NONE
#SBATCH --mem=8192M
#SBATCH --time=1-02:03:04
#SBATCH --partition=long
#SBATCH --account=astro
#SBATCH --reservation=maint-window
# jobbridge job jb0case0reso (slurm)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$SLURM_JOB_ID"
export JOBBRIDGE_SUBMIT_HOST="$SLURM_SUBMIT_HOST"
export JOBBRIDGE_NODELIST="$SLURM_JOB_NODELIST"
export JOBBRIDGE_JOB_NAME='mpi run'
export JOBBRIDGE_WORKDIR='/scratch/jobbridge jobs/jb0case0reso'
jobbridge_exit_file='/scratch/jobbridge jobs/jb0case0reso'/exitcode
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
cd '/scratch/jobbridge jobs/jb0case0reso' || jobbridge_exit 127
mpirun -np 8 mpi_app --steps 100 > '/scratch/jobbridge jobs/jb0case0reso/stdout' 2> '/scratch/jobbridge jobs/jb0case0reso/stderr'
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
