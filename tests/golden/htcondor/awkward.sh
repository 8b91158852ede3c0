#!/bin/bash
# jobbridge job jb0case0awkw (htcondor)
export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"
export JOBBRIDGE_JOB_ID="$JOBBRIDGE_HTCONDOR_ID"
export JOBBRIDGE_SUBMIT_HOST="$(sed -n 's/^GlobalJobId = "\([^#@]*@\)\{0,1\}\([^#]*\)#.*/\2/p' "$_CONDOR_JOB_AD" 2>/dev/null)"
export JOBBRIDGE_NODELIST="$(uname -n)"
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
