#!/bin/bash
#SBATCH --job-name=it_s_a_test_job_second_line.jb-jb0case0imag
#SBATCH --output=slurm-%j.out
#SBATCH --error=slurm-%j.err
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --export=ALL
# jobbridge job jb0case0imag (slurm)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$SLURM_JOB_ID"
export JOBBRIDGE_SUBMIT_HOST="$SLURM_SUBMIT_HOST"
export JOBBRIDGE_NODELIST="$SLURM_JOB_NODELIST"
export APPTAINERENV_JOBBRIDGE_JOB_ID="$JOBBRIDGE_JOB_ID"
export APPTAINERENV_JOBBRIDGE_SUBMIT_HOST="$JOBBRIDGE_SUBMIT_HOST"
export APPTAINERENV_JOBBRIDGE_NODELIST="$JOBBRIDGE_NODELIST"
export JOBBRIDGE_JOB_NAME='it'"'"'s a $(test); job
second line'
export JOBBRIDGE_WORKDIR='/data/my dir/$(x)/it'"'"'s'
export TRICKY='$(touch pwned) '"'"'single'"'"' "double" `tick` ;
next line \'
export APPTAINERENV_TRICKY='$(touch pwned) '"'"'single'"'"' "double" `tick` ;
next line \'
export APPTAINERENV_JOBBRIDGE_JOB_NAME='it'"'"'s a $(test); job
second line'
export APPTAINERENV_JOBBRIDGE_WORKDIR='/data/my dir/$(x)/it'"'"'s'
jobbridge_exit_file=/cluster/jobs/jb0case0imag/exitcode
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
cd '/data/my dir/$(x)/it'"'"'s' || jobbridge_exit 127
jobbridge_prologue() {
module load gcc
echo 'prologue ran'
}
jobbridge_prologue || jobbridge_exit "$?"
apptainer exec --cleanenv --disable-cache --bind /cluster/jobs/jb0case0imag --bind '/data/my dir/$(x)/it'"'"'s' --pwd '/data/my dir/$(x)/it'"'"'s' docker://registry.example/tools:1.0 '/opt/my tools/run it'"'"'s.sh' '$(touch pwned)' '`touch pwned`' 'a b' 'it'"'"'s' 'say "hi"' 'new
line' '; touch pwned' '*' '$HOME' '\' < 'in put.txt' > 'out '"'"'file'"'"'.log' 2> 'err
file.log'
jobbridge_status=$?
jobbridge_epilogue() {
echo epilogue ran
}
jobbridge_epilogue
jobbridge_exit "$jobbridge_status"
