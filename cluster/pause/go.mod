module taxi-mlops/cluster/pause

go 1.26
