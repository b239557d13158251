# Buckets and least-privilege IAM for emotiw on AWS (EKS with IRSA, or the Ray cluster
# launcher's instance profiles):
#   input   clips and label files                  scoring: read    training: read
#   output  the scores table                       scoring: write   training: -
#   models  MLflow artifacts, weights, features    scoring: read    training: read + write
# `terraform init && terraform apply -var oidc_provider_arn=... -var oidc_provider_url=...`

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "prefix" {
  type        = string
  default     = "emotiw"
  description = "Bucket and role name prefix (buckets: <prefix>-input, -output, -models)."
}

variable "namespace" {
  type        = string
  default     = "emotiw"
  description = "Kubernetes namespace of the Ray pods' service accounts."
}

variable "oidc_provider_arn" {
  type        = string
  description = "The EKS cluster's IAM OIDC provider ARN (IAM roles for service accounts)."
}

variable "oidc_provider_url" {
  type        = string
  description = "The same provider's URL without https:// (oidc.eks.<region>.amazonaws.com/id/...)."
}

locals {
  buckets = {
    input  = "${var.prefix}-input"
    output = "${var.prefix}-output"
    models = "${var.prefix}-models"
  }
}

resource "aws_s3_bucket" "data" {
  # checkov:skip=CKV_AWS_144: cross-region replication needs a second region's buckets and keys chosen per deployment; versioning (its prerequisite) is on, and scores / features can be rebuilt from the input
  # checkov:skip=CKV2_AWS_62: nothing consumes bucket events: the schedule finds new clips by listing (the dry-run pre-check)
  for_each = local.buckets
  bucket   = each.value
}

resource "aws_s3_bucket_versioning" "data" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.data[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.data[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each                = local.buckets
  bucket                  = aws_s3_bucket.data[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Server access logs of the three buckets, kept 90 days.
resource "aws_s3_bucket_logging" "data" {
  for_each      = local.buckets
  bucket        = aws_s3_bucket.data[each.key].id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "${each.key}/"
}

resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18: this is the access-log bucket; logging it into itself would loop
  # checkov:skip=CKV_AWS_145: S3 server access log delivery supports only SSE-S3 on the target bucket (set below), not SSE-KMS
  # checkov:skip=CKV_AWS_144: access logs are kept 90 days in one region; replication is a per-deployment choice
  # checkov:skip=CKV2_AWS_62: nothing consumes access-log events; they are read only in audits
  bucket = "${var.prefix}-logs"
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = 90
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# Every bucket: an upload whose writer died is aborted after a day (chunks are uploaded to
# their final keys in one upload each, docs/exactly-once.md), and overwritten or deleted
# versions go after 30 days. The output bucket also drops staging that older versions wrote
# on S3 and no run recovered within a week.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.data[each.key].id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
  dynamic "rule" {
    for_each = each.key == "output" ? ["scores/_staging/"] : []
    content {
      id     = "abandoned-staging"
      status = "Enabled"
      filter {
        prefix = rule.value
      }
      expiration {
        days = 7
      }
      abort_incomplete_multipart_upload {
        days_after_initiation = 1
      }
    }
  }
}
