# IAM matched to where Ray runs each stage (README "Run on a cluster", the table): one
# policy document per (job, node kind), and roles that combine them for the node kinds of each
# cluster. Drivers run on the head (num-cpus 0: no task lands there); every task and actor
# runs on worker nodes, and a CPU-only one may land on a GPU node too, so all worker groups
# of a cluster share one role. Rows reach the tables only through the driver (chunk commits,
# emotiw.table.ChunkWriter): no worker writes a table. tests/test_infra.py derives each node
# kind's needs from the manifests' own flags and checks these documents against them.
#
#   role            used by                                            policy documents
#   score-driver    scoring RayJob head                                score_driver
#   score-worker    scoring RayJob cpu + gpu groups                    score_worker
#   train-driver    training RayJob head (extract + train drivers)     train_driver
#   train-worker    training RayJob cpu + gpu groups                   train_worker
#   head            long-lived RayCluster head (any job)               score_driver, train_driver
#   worker          RayCluster groups; launcher cpu/gpu node types     score_worker, train_worker
#   launcher-head   Ray cluster launcher head (cluster/aws.yaml)       launcher, score_driver, train_driver
#   schedule        the schedule's pre-check pod (dry run: read-only)  schedule
#   mlflow          the MLflow server (artifacts under models/mlflow)  mlflow

locals {
  roles = {
    score-driver  = ["score_driver"]
    score-worker  = ["score_worker"]
    train-driver  = ["train_driver"]
    train-worker  = ["train_worker"]
    head          = ["score_driver", "train_driver"]
    worker        = ["score_worker", "train_worker"]
    launcher-head = ["launcher", "score_driver", "train_driver"]
    schedule      = ["schedule"]
    mlflow        = ["mlflow"]
  }
  # roles that EC2 instances take (cluster/aws.yaml's instance profiles)
  instance_roles = ["launcher-head", "worker"]
  policies = {
    score_driver = data.aws_iam_policy_document.score_driver.json
    score_worker = data.aws_iam_policy_document.score_worker.json
    train_driver = data.aws_iam_policy_document.train_driver.json
    train_worker = data.aws_iam_policy_document.train_worker.json
    schedule     = data.aws_iam_policy_document.schedule.json
    mlflow       = data.aws_iam_policy_document.mlflow.json
    launcher     = data.aws_iam_policy_document.launcher.json
  }
  role_policies = merge([
    for role, docs in local.roles : { for doc in docs : "${role}.${doc}" => { role = role, doc = doc } }
  ]...)
}

# Scoring driver: checks the weights are staged (before any actor starts), lists the input,
# holds the lease and commits chunks under scores/ and the per-face table's under details/
# (reads the table's keys to skip what is done; prunes a dead run's orphan detail chunks). The model comes from the MLflow server over HTTP.
data "aws_iam_policy_document" "score_driver" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["input"].arn, aws_s3_bucket.data["output"].arn, aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "CheckWeights"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/weights/*"]
  }
  statement {
    sid       = "CommitScores"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["output"].arn}/scores/*", "${aws_s3_bucket.data["output"].arn}/details/*"]
  }
}

# Scoring workers: extract actors read clips; every actor reads the pretrained weights.
data "aws_iam_policy_document" "score_worker" {
  statement {
    sid       = "ListWeights"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadClips"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["input"].arn}/*"]
  }
  statement {
    sid       = "ReadWeights"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/weights/*"]
  }
}

# Training head: the extract drivers (list clips, read label files, commit feature tables) and
# the train driver (feature keys, Ray Train experiment state, pretrained front-ends put back
# into the packaged model). MLflow artifacts go through the MLflow server.
data "aws_iam_policy_document" "train_driver" {
  statement {
    sid       = "ListInputAndModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["input"].arn, aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadLabelsAndWeights"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["input"].arn}/*", "${aws_s3_bucket.data["models"].arn}/weights/*"]
  }
  statement {
    sid       = "CommitFeaturesAndTrainState"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/features/*", "${aws_s3_bucket.data["models"].arn}/ray-train/*"]
  }
}

# Training workers: extract actors (clips, weights), Ray Data reads of the feature tables and
# the preparing actors (weights), Ray Train workers (checkpoints under ray-train/).
data "aws_iam_policy_document" "train_worker" {
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadClipsFeaturesWeights"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["input"].arn}/*", "${aws_s3_bucket.data["models"].arn}/features/*", "${aws_s3_bucket.data["models"].arn}/weights/*"]
  }
  statement {
    sid       = "Checkpoints"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/ray-train/*"]
  }
}

# The schedule's pre-check (`score --dry-run`): checks the weights are staged, lists the
# input and reads the table's keys; writes nothing.
data "aws_iam_policy_document" "schedule" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["input"].arn, aws_s3_bucket.data["output"].arn, aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadScoresCheckWeights"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["output"].arn}/scores/*", "${aws_s3_bucket.data["models"].arn}/weights/*"]
  }
}

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ArtifactsReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/mlflow/*"]
  }
}

# The Ray cluster launcher's head (cluster/aws.yaml) launches and stops the worker instances
# and hands them the worker instance profile, nothing else.
data "aws_iam_policy_document" "launcher" {
  # checkov:skip=CKV_AWS_356: ec2:RunInstances and Describe* do not support resource-level scoping (AWS service authorization reference); stopping and terminating are conditioned on the cluster's tag below
  # checkov:skip=CKV_AWS_111: same statement: RunInstances / CreateTags create resources whose ARNs are not known in advance
  statement {
    sid       = "LaunchWorkers"
    actions   = ["ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs"]
    resources = ["*"]
  }
  statement {
    sid       = "ManageOwnWorkers"
    actions   = ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"]
    resources = ["arn:aws:ec2:${var.region}:*:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/ray-cluster-name"
      values   = [var.prefix]
    }
  }
  statement {
    sid       = "PassWorkerRole"
    actions   = ["iam:PassRole", "iam:GetInstanceProfile"]
    resources = [aws_iam_role.job["worker"].arn, aws_iam_instance_profile.job["worker"].arn]
  }
}

# Pods assume the role of their Kubernetes service account (cluster/kuberay/serviceaccounts.yaml,
# infra/k8s/mlflow.yaml): system:serviceaccount:<namespace>:<prefix>-<role>; the launcher's
# instances (cluster/aws.yaml) take the instance roles as instance profiles.
data "aws_iam_policy_document" "assume" {
  for_each = local.roles
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.prefix}-${each.key}"]
    }
  }
  dynamic "statement" {
    for_each = contains(local.instance_roles, each.key) ? [each.key] : []
    content {
      actions = ["sts:AssumeRole"]
      principals {
        type        = "Service"
        identifiers = ["ec2.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "job" {
  for_each           = local.roles
  name               = "${var.prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

resource "aws_iam_role_policy" "job" {
  for_each = local.role_policies
  name     = "${var.prefix}-${each.value.role}-${each.value.doc}"
  role     = aws_iam_role.job[each.value.role].id
  policy   = local.policies[each.value.doc]
}

resource "aws_iam_instance_profile" "job" {
  for_each = toset(local.instance_roles)
  name     = aws_iam_role.job[each.key].name
  role     = aws_iam_role.job[each.key].name
}

output "role_arns" {
  value = { for k, r in aws_iam_role.job : k => r.arn }
}

output "buckets" {
  value = local.buckets
}
