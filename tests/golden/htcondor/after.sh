#!/bin/sh
# jobbridge: may the node run? 0 yes, 1 never, 75 not yet (DAGMan asks again later)
for parent in "$@"; do
    id=${parent%%=*}
    condition=${parent#*=}
    case $id in
    dag:*)  # the parent waits in DAGMan itself: its node job, once DAGMan is done
        cluster=${id#dag:}
        proc=${cluster#*.}
        cluster=${cluster%%.*}
        queued=$(condor_q "$cluster" -af JobStatus) || exit 75
        [ -z "$queued" ] || exit 75
        ended=$(condor_history -limit 1 \
            -constraint "DAGManJobId == $cluster && ProcId == $proc" \
            -af JobStatus ExitCode) || exit 75
        [ -n "$ended" ] || ended="3 undefined"  # its own parents failed: it never ran
        ;;
    *)
        queued=$(condor_q "$id" -af JobStatus) || exit 75
        [ -z "$queued" ] || exit 75
        ended=$(condor_history "$id" -limit 1 -af JobStatus ExitCode) || exit 75
        ;;
    esac
    [ -n "$ended" ] || continue  # gone from the history too: taken as met
    case $ended in
    "4 0") ok=yes ;;
    *) ok=no ;;
    esac
    case $condition in
    afterok) [ "$ok" = yes ] || exit 1 ;;
    afternotok) [ "$ok" = no ] || exit 1 ;;
    esac
done
exit 0
