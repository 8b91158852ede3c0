#!/bin/bash
#BSUB -J it_s_a_test_job_second_line.jb-jb0case0awkw
#BSUB -o lsf-%J.out
#BSUB -e lsf-%J.err
#BSUB -n 1
#BSUB -R "span[hosts=1]"
# jobbridge job jb0case0awkw (lsf)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$LSB_JOBID"
export JOBBRIDGE_SUBMIT_HOST="$LSB_SUB_HOST"
export JOBBRIDGE_NODELIST="$(set -- $LSB_MCPU_HOSTS; hosts=; while [ $# -ge 2 ]; do hosts="${hosts:+$hosts,}$1"; shift 2; done; printf %s "$hosts")"
export JOBBRIDGE_JOB_NAME='it'"'"'s a $(test); job
second line'
export JOBBRIDGE_WORKDIR='/data/my dir/$(x)/it'"'"'s'
export TRICKY='$(touch pwned) '"'"'single'"'"' "double" `tick` ;
next line \'
jobbridge_exit_file='/scratch/jobbridge jobs/jb0case0awkw'/exitcode
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
'/opt/my tools/run it'"'"'s.sh' '$(touch pwned)' '`touch pwned`' 'a b' 'it'"'"'s' 'say "hi"' 'new
line' '; touch pwned' '*' '$HOME' '\' < 'in put.txt' > 'out '"'"'file'"'"'.log' 2> 'err
file.log'
jobbridge_status=$?
jobbridge_epilogue() {
echo epilogue ran
}
jobbridge_epilogue
jobbridge_exit "$jobbridge_status"
