module chatworkspace-operator/tools/pause

go 1.25.0
