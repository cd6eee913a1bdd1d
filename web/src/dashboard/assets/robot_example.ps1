# A robot for Orchestrator RPA in PowerShell (UiPath and Power Automate robots call HTTP this way).
$Base = "http://127.0.0.1:8000"
$Headers = @{ Authorization = "Token YOUR_ROBOT_TOKEN" }

function Invoke-Orchestrator($Path, $Body = @{}) {
    Invoke-RestMethod -Method Post -Uri "$Base$Path" -Headers $Headers `
        -ContentType "application/json" -Body ($Body | ConvertTo-Json -Depth 10)
}

Invoke-Orchestrator "/api/v1/robot/pulse" @{ status = "ACTIVE" } | Out-Null
while ($true) {
    # Long poll for up to 20 s; the call also counts as a pulse.
    $items = Invoke-Orchestrator "/api/v1/robot/items/claim?wait=20"
    foreach ($item in @($items)) {
        $lease = @{ lease_id = $item.lease_id }
        Invoke-Orchestrator "/api/v1/robot/items/$($item.id)/start" $lease | Out-Null
        try {
            # Your automation here, reading $item.values (one CSV row by column name).
            $output = @{ processed = $true }
            Invoke-Orchestrator "/api/v1/robot/items/$($item.id)/complete" `
                ($lease + @{ observation = "done"; output = $output }) | Out-Null
        } catch {
            Invoke-Orchestrator "/api/v1/robot/items/$($item.id)/fail" `
                ($lease + @{ kind = "application"; message = $_.Exception.Message }) | Out-Null
        }
    }
}
