# One policy per role, each naming only its buckets and actions.

data "aws_iam_policy_document" "scoring" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["input"].arn, aws_s3_bucket.data["output"].arn, aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadInputAndModels"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["input"].arn}/*", "${aws_s3_bucket.data["models"].arn}/*"]
  }
  statement {
    sid       = "WriteOutput"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["output"].arn}/*"]
  }
}

data "aws_iam_policy_document" "training" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data["input"].arn, aws_s3_bucket.data["models"].arn]
  }
  statement {
    sid       = "ReadInput"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data["input"].arn}/*"]
  }
  statement {
    sid       = "WriteModels"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data["models"].arn}/*"]
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

locals {
  roles = {
    scoring  = data.aws_iam_policy_document.scoring.json
    training = data.aws_iam_policy_document.training.json
    mlflow   = data.aws_iam_policy_document.mlflow.json
  }
}

# Pods assume the role of their Kubernetes service account (cluster/kuberay/serviceaccounts.yaml,
# infra/k8s/mlflow.yaml): system:serviceaccount:<namespace>:<prefix>-<role>.
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
  # The Ray cluster launcher's nodes (cluster/aws.yaml) use the same roles as instance profiles.
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "job" {
  for_each           = local.roles
  name               = "${var.prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

resource "aws_iam_role_policy" "job" {
  for_each = local.roles
  name     = "${var.prefix}-${each.key}-s3"
  role     = aws_iam_role.job[each.key].id
  policy   = each.value
}

resource "aws_iam_instance_profile" "job" {
  for_each = aws_iam_role.job
  name     = each.value.name
  role     = each.value.name
}

output "role_arns" {
  value = { for k, r in aws_iam_role.job : k => r.arn }
}

output "buckets" {
  value = local.buckets
}

# The Ray cluster launcher's head node (cluster/aws.yaml): launches and stops the worker
# instances and hands them the scoring / training instance profiles, nothing else.
data "aws_iam_policy_document" "ray_head_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "ray_head" {
  statement {
    sid       = "ManageWorkers"
    actions   = ["ec2:RunInstances", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs"]
    resources = ["*"] # EC2 Describe* and RunInstances do not support resource-level scoping
  }
  statement {
    sid       = "PassWorkerRoles"
    actions   = ["iam:PassRole", "iam:GetInstanceProfile"]
    resources = [aws_iam_role.job["scoring"].arn, aws_iam_role.job["training"].arn, aws_iam_instance_profile.job["scoring"].arn, aws_iam_instance_profile.job["training"].arn]
  }
}

resource "aws_iam_role" "ray_head" {
  name               = "${var.prefix}-ray-head"
  assume_role_policy = data.aws_iam_policy_document.ray_head_assume.json
}

resource "aws_iam_role_policy" "ray_head" {
  name   = "${var.prefix}-ray-head-ec2"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.ray_head.json
}

resource "aws_iam_instance_profile" "ray_head" {
  name = aws_iam_role.ray_head.name
  role = aws_iam_role.ray_head.name
}
