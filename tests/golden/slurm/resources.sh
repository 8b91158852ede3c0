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
jobbridge_exit() {
    printf '%s %s %s\n' "$1" "$jobbridge_started" "$(date +%s)" > "$jobbridge_exit_file.tmp"
    mv -f "$jobbridge_exit_file.tmp" "$jobbridge_exit_file"
    exit "$1"
}
cd '/scratch/jobbridge jobs/jb0case0reso' || jobbridge_exit 127
mpirun -np 8 mpi_app --steps 100 > '/scratch/jobbridge jobs/jb0case0reso/stdout' 2> '/scratch/jobbridge jobs/jb0case0reso/stderr'
jobbridge_status=$?
jobbridge_exit "$jobbridge_status"
