module streampipe.dev/tests/cluster/pause

go 1.22
